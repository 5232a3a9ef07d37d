"""ServiceAccount selection through the real API server, IRSA compatible: the compiled
MutatingWebhookConfiguration of an endpoint with ``injector.serviceAccountNamespaces`` (its
second entry: ``kubernetes.io/metadata.name In [...]``, the opt-out labels ``DoesNotExist``),
served by a runtime process of this module's own at its Service's ClusterIP. Unlabelled Pods of
the listed namespace whose ServiceAccount carries ``eks.amazonaws.com/role-arn`` get the sidecar
and the variables, and their exchange reads that ServiceAccount (role in ``sub``, the
ServiceAccount's token lifetime); Pods whose ServiceAccount binds nothing are stored untouched
(outcome ``unbound``); Pods of other namespaces and opted-out Pods never reach the webhook.

The module's runtime is a deployment named ``kube-sts-sa`` beside the tier's ``kube-sts`` (its
injector label is ``aws-sa``, so its label entry selects no other test's Pods), serving a
certificate of its own for ``kube-sts-sa.kube-sts.svc`` (``cert-manager`` TLS mode: the files
are written by the test, as cert-manager's would be mounted)."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from harness.reviews import seed_pod
from kube_sts.runtime import config
from tests.controlplane import cluster, deployment
from tests.controlplane.test_admission import create, named

LISTED = "irsa-team"
"""The namespace the module's endpoint selects by ServiceAccount (never labelled by the test)."""
SA_ROLE = "arn:aws:iam::123456789012:role/bound-to-the-service-account"
NAME = "kube-sts-sa"
SERVICE_NAME = f"{NAME}.kube-sts.svc"


def values() -> str:
    text = (deployment.EXAMPLES / "aws" / "values.yaml").read_text()
    text = text.replace("sts:\n", f"sts:\n  name: {NAME}\n", 1)
    text = text.replace('constraint: "(namespace=myns)"', f'constraint: "(&(namespace={LISTED})(role={SA_ROLE}))"')
    return text.replace("      label: aws-role\n", f"      label: aws-sa\n      serviceAccountNamespaces: [{LISTED}]\n")


class Replica(deployment.Runtime):
    """The module's runtime: its client trusts the module's CA and checks the module's Service name."""

    ca_pem: str

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem)

    def outcomes(self) -> dict[str, float]:
        status, text = self.get("/metrics")
        assert status == 200
        return {
            sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "kube_sts_webhook_admissions_total"
        }


@pytest.fixture(scope="module")
def replica(deployed: deployment.Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    plane = deployed.plane
    directory = tmp_path_factory.mktemp("by-account")
    (directory / "values").mkdir()
    (directory / "values" / "values.yaml").write_text(values())
    stream = deployment.compile_example(directory / "values", directory / "manifests")
    compiled = deployment.Deployment(plane, stream, [d for d in yaml.safe_load_all(stream) if d])
    [webhooks] = [d for d in compiled.documents if d["kind"] == "MutatingWebhookConfiguration"]
    assert [hook["name"] for hook in webhooks["webhooks"]] == [
        f"aws.{NAME}.sts.tremolo.io",
        f"sa.aws.{NAME}.sts.tremolo.io",
    ]
    plane.create_namespace(LISTED)
    plane.apply(compiled.one("Service"))
    stored = plane.get("service", NAME, deployed.namespace)
    assert stored is not None
    host = stored["spec"]["clusterIP"]
    # the serving certificate, as cert-manager would mount it
    ca = cluster._CA.create("by-account webhook CA")
    certificate, key = ca.issue(cluster._name(NAME), client=False, dns=(SERVICE_NAME,))
    ca_pem = ca.certificate.public_bytes(serialization.Encoding.PEM).decode()
    tls_dir = directory / "runtime" / "no-mounted-tls"
    tls_dir.mkdir(parents=True)
    (tls_dir / "tls.crt").write_bytes(certificate)
    (tls_dir / "tls.key").write_bytes(key)
    (tls_dir / "ca.crt").write_text(ca_pem)
    account = deployed.one("ServiceAccount")["metadata"]["name"]
    token = plane.token(deployed.namespace, account, cluster.API_AUDIENCE, seconds=24 * 3600)
    kubeconfig = plane.kubeconfig_for("runtime-by-account", token)
    runtime = Replica(
        deployed, directory / "runtime", kubeconfig, host, stored["spec"]["ports"][0]["port"],
        pod=deployed.runtime_pod("by-account"),
    )  # fmt: skip
    runtime.ca_pem = ca_pem
    runtime.service_name = SERVICE_NAME
    [endpoint] = json.loads(compiled.one("ConfigMap")["data"]["config.json"])["endpoints"]
    assert endpoint["injector"]["serviceAccountNamespaces"] == [LISTED]
    endpoint["issuer"]["keys"]["waitForPublication"] = False  # the example's issuer host is not reachable
    runtime.config["endpoints"] = [endpoint]
    runtime.config["tls"] = {"mode": "cert-manager", "secretName": f"{NAME}-tls", "dnsNames": [SERVICE_NAME]}
    runtime.config["webhookConfigurations"] = []
    runtime.config_file.write_text(json.dumps(runtime.config))
    runtime.start()
    for hook in webhooks["webhooks"]:
        hook["clientConfig"]["caBundle"] = base64.b64encode(ca_pem.encode()).decode()
    plane.apply(webhooks)
    try:
        yield runtime
    finally:
        plane.kubectl("delete", "mutatingwebhookconfiguration", webhooks["metadata"]["name"], "--ignore-not-found")
        runtime.stop()
        plane.kubectl("delete", "service", NAME, f"--namespace={deployed.namespace}", "--ignore-not-found")


def account(plane: cluster.ControlPlane, namespace: str, name: str, annotations: dict[str, str]) -> None:
    plane.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        }
    )


def workload(namespace: str, name: str, service_account: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The seed's Pod as it runs under the EKS webhook: no label or annotation of kube-sts."""
    pod = named(seed_pod(), namespace, name)
    pod["metadata"]["labels"] = {"app": "irsa", **(labels or {})}
    pod["metadata"]["annotations"] = {}
    pod["spec"]["serviceAccountName"] = service_account
    return pod


def containers(stored: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in stored["spec"].get("initContainers", []) + stored["spec"]["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v.get("value", "") for v in container.get("env", [])}


def test_an_unlabelled_pod_whose_service_account_has_the_eks_role_is_injected_and_exchanges(
    replica: Replica,
) -> None:
    plane = replica.deployment.plane
    account(plane, LISTED, "irsa", {config.EKS_ROLE_ANNOTATION: SA_ROLE})
    before = replica.outcomes()
    stored = create(plane, LISTED, workload(LISTED, "irsa-workload", "irsa"))
    found = containers(stored)
    assert found["kube-sts-aws"]["restartPolicy"] == "Always"
    assert env_of(found["aws-cli"])["AWS_ROLE_ARN"] == SA_ROLE
    assert env_of(found["aws-cli"])["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/kube-sts/aws/token"
    assert stored["metadata"]["annotations"][config.MARKER_ANNOTATION] == "aws"
    assert "labels" not in stored["metadata"] or "tremolo.io/aws-sa" not in stored["metadata"]["labels"]
    assert replica.outcomes()["injected"] == before.get("injected", 0) + 1
    # the sidecar's exchange: a token bound to the stored Pod; the role comes from the ServiceAccount
    audience = replica.config["stsAudience"]
    status, answer = replica.post(
        "/aws/token", headers={"Authorization": f"Bearer {plane.token(LISTED, 'irsa', audience, pod=stored)}"}
    )
    assert status == 200, answer
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["sub"] == f"{replica.config['cluster']}:{LISTED}:irsa:{SA_ROLE}"
    assert answer["expires_in"] == 3600
    # the ServiceAccount's token lifetime (the EKS key), read live at exchange
    account(plane, LISTED, "irsa", {config.EKS_ROLE_ANNOTATION: SA_ROLE, config.EKS_LIFETIME_ANNOTATION: "1200"})
    status, answer = replica.post(
        "/aws/token", headers={"Authorization": f"Bearer {plane.token(LISTED, 'irsa', audience, pod=stored)}"}
    )
    assert status == 200, answer
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == answer["expires_in"] == 1200


def test_a_service_account_lifetime_out_of_bounds_is_refused_by_the_api_server(replica: Replica) -> None:
    plane = replica.deployment.plane
    account(plane, LISTED, "long-lived", {config.EKS_ROLE_ANNOTATION: SA_ROLE, config.EKS_LIFETIME_ANNOTATION: "86400"})
    before = replica.outcomes()
    answer = create(plane, LISTED, workload(LISTED, "long-lived", "long-lived"), check=False)
    assert answer.returncode != 0
    assert (
        f'admission webhook "sa.aws.{NAME}.sts.tremolo.io" denied the request: kube-sts: the ServiceAccount\'s '
        "annotation eks.amazonaws.com/token-expiration is '86400'"
    ) in answer.stderr
    assert replica.outcomes()["refused"] == before.get("refused", 0) + 1


def test_an_unlabelled_pod_whose_service_account_binds_nothing_is_untouched(replica: Replica) -> None:
    plane = replica.deployment.plane
    before = replica.outcomes()
    pod = workload(LISTED, "plain-workload", "app")
    stored = create(plane, LISTED, pod)
    assert list(containers(stored)) == ["aws-cli"]
    assert "AWS_ROLE_ARN" not in env_of(stored["spec"]["containers"][0])
    assert config.MARKER_ANNOTATION not in (stored["metadata"].get("annotations") or {})
    assert not [v["name"] for v in stored["spec"].get("volumes", []) if v["name"].startswith("kube-sts-")]
    after = replica.outcomes()
    assert after["unbound"] == before.get("unbound", 0) + 1  # it reached the webhook, which let it be
    assert after.get("injected", 0) == before.get("injected", 0)


def test_a_pod_of_an_unlisted_namespace_never_reaches_the_webhook(replica: Replica, namespace: str) -> None:
    plane = replica.deployment.plane
    account(plane, namespace, "irsa", {config.EKS_ROLE_ANNOTATION: SA_ROLE})
    before = replica.admission_reviews()
    stored = create(plane, namespace, workload(namespace, "elsewhere", "irsa"))
    assert list(containers(stored)) == ["aws-cli"]
    assert replica.admission_reviews() == before


@pytest.mark.parametrize("label", [config.SKIP_LABEL, config.EKS_SKIP_LABEL])
def test_an_opted_out_pod_never_reaches_the_webhook(replica: Replica, label: str) -> None:
    plane = replica.deployment.plane
    account(plane, LISTED, "irsa", {config.EKS_ROLE_ANNOTATION: SA_ROLE})
    before = replica.admission_reviews()
    name = "opted-out-" + ("ours" if label == config.SKIP_LABEL else "eks")
    stored = create(plane, LISTED, workload(LISTED, name, "irsa", {label: "true"}))
    assert list(containers(stored)) == ["aws-cli"]
    assert "AWS_ROLE_ARN" not in env_of(stored["spec"]["containers"][0])
    assert replica.admission_reviews() == before
