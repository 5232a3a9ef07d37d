"""Injection that covers real clusters, through the real API server: a second mutating webhook
(a service mesh's, served here at another ClusterIP) adds a container after ours and the API
server's reinvocation completes it; per-Pod annotations; the role bound by the Pod's
ServiceAccount, at admission (the stored Pod) and at exchange (a real projected token)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import jsonpatch
import jwt
import pytest

from harness.reviews import ROLE, review_body, seed_pod
from kube_sts.runtime import config
from tests.controlplane import cluster, deployment, webhooks
from tests.controlplane.test_admission import create, named
from tests.webhook.test_injection import validate

MESH_LABEL = "kube-sts-test/mesh"
MESH_CONTAINER = {"name": "mesh-proxy", "image": "registry.example/mesh-proxy:1", "args": ["proxy"]}
SA_ROLE = "arn:aws:iam::123456789012:role/bound-to-the-service-account"
TOKEN_DIR = "/var/run/secrets/kube-sts/aws"


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v.get("value", "") for v in container.get("env", [])}


def containers(stored: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in stored["spec"].get("initContainers", []) + stored["spec"]["containers"]}


# -- a second mutating webhook ---------------------------------------------------------------------


class _Mesh(webhooks.ReviewHandler):
    """Adds ``MESH_CONTAINER`` to every Pod it reviews that lacks it, as a service mesh injector does."""

    reviews: list[dict[str, Any]]

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pod = review["request"]["object"]
        type(self).reviews.append(pod)
        missing = MESH_CONTAINER["name"] not in {c["name"] for c in pod["spec"]["containers"]}
        self.answer(review, [{"op": "add", "path": "/spec/containers/-", "value": MESH_CONTAINER}] if missing else None)


@pytest.fixture(scope="module")
def mesh(runtime: deployment.Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """The mesh webhook: a Service at its static ClusterIP:443, its server there, and a
    MutatingWebhookConfiguration that sorts after ours (the API server calls them by name), for
    Pods labelled ``MESH_LABEL`` only. Yields the Pods it reviewed."""
    plane = runtime.deployment.plane
    reviews: list[dict[str, Any]] = []
    handler = type("Mesh", (_Mesh,), {"reviews": reviews})
    server = webhooks.SecondWebhook(
        plane,
        tmp_path_factory.mktemp("mesh"),
        handler,
        address=plane.static_ip("mesh"),
        namespace="mesh-system",
        service="mesh",
    )
    hook = {"name": "proxy.mesh.example", "sideEffects": "None", "failurePolicy": "Fail"}
    plane.apply(server.configuration("zz-mesh", hook, path="/inject", label=MESH_LABEL))
    try:
        yield reviews
    finally:
        plane.kubectl("delete", "mutatingwebhookconfiguration", "zz-mesh", "--ignore-not-found")
        server.stop()


def meshed(namespace: str, name: str) -> dict[str, Any]:
    pod = named(seed_pod(), namespace, name)
    pod["metadata"]["labels"][MESH_LABEL] = "true"
    return pod


def test_a_container_added_by_a_later_webhook_is_completed_on_reinvocation(
    runtime: deployment.Runtime, mesh: list[dict[str, Any]], namespace: str
) -> None:
    plane = runtime.deployment.plane
    ours = plane.get("mutatingwebhookconfiguration", "kube-sts-aws")
    assert ours is not None and [hook["reinvocationPolicy"] for hook in ours["webhooks"]] == ["IfNeeded"]
    before = runtime.admission_reviews()
    stored = create(plane, namespace, meshed(namespace, "meshed"))
    found = containers(stored)
    # the API server called ours, then the mesh's (which added its proxy), then ours again
    assert runtime.admission_reviews() == before + 2
    [reviewed] = [pod for pod in mesh if pod["metadata"].get("name") == "meshed"]
    assert "kube-sts-aws" in {c["name"] for c in reviewed["spec"]["initContainers"]}  # ours ran first
    proxy = found["mesh-proxy"]
    assert {"name": "kube-sts-aws-token", "mountPath": TOKEN_DIR, "readOnly": True} in proxy["volumeMounts"]
    assert env_of(proxy)["AWS_ROLE_ARN"] == ROLE
    assert env_of(proxy)["AWS_WEB_IDENTITY_TOKEN_FILE"] == f"{TOKEN_DIR}/token"
    # one sidecar, one token volume, one marker: the reinvocation only completed the proxy
    assert [c["name"] for c in stored["spec"]["initContainers"]] == ["kube-sts-aws"]
    assert [v["name"] for v in stored["spec"]["volumes"]].count("kube-sts-aws-token") == 1
    assert stored["metadata"]["annotations"][config.MARKER_ANNOTATION] == "aws"
    assert env_of(found["aws-cli"])["AWS_ROLE_ARN"] == ROLE


def test_a_container_the_pod_excludes_stays_untouched_on_reinvocation(
    runtime: deployment.Runtime, mesh: list[dict[str, Any]], namespace: str
) -> None:
    pod = meshed(namespace, "meshed-excluded")
    pod["metadata"]["annotations"][config.EXCLUDE_ANNOTATION] = "mesh-proxy"
    found = containers(create(runtime.deployment.plane, namespace, pod))
    assert "AWS_ROLE_ARN" not in env_of(found["mesh-proxy"])
    assert TOKEN_DIR not in {m["mountPath"] for m in found["mesh-proxy"].get("volumeMounts", [])}
    assert env_of(found["aws-cli"])["AWS_ROLE_ARN"] == ROLE


# -- per-Pod annotations -------------------------------------------------------------------------


def test_include_annotation_through_the_api_server(runtime: deployment.Runtime, namespace: str) -> None:
    pod = named(seed_pod(), namespace, "included")
    pod["spec"]["containers"].append({"name": "worker", "image": "busybox"})
    pod["metadata"]["annotations"][config.INCLUDE_ANNOTATION] = "worker"
    found = containers(create(runtime.deployment.plane, namespace, pod))
    assert env_of(found["worker"])["AWS_ROLE_ARN"] == ROLE
    assert "AWS_ROLE_ARN" not in env_of(found["aws-cli"])


def test_a_token_lifetime_out_of_bounds_is_refused_by_the_api_server(
    runtime: deployment.Runtime, namespace: str
) -> None:
    pod = named(seed_pod(), namespace, "too-long")
    pod["metadata"]["annotations"][config.LIFETIME_ANNOTATION] = "2h"
    answer = create(runtime.deployment.plane, namespace, pod, check=False)
    assert answer.returncode != 0
    assert 'admission webhook "aws.kube-sts.sts.tremolo.io" denied the request: kube-sts: the annotation ' in (
        answer.stderr
    )
    assert "kube-sts.tremolo.io/token-lifetime is '2h'" in answer.stderr and "from 600 to 3600" in answer.stderr


# -- exchange: a runtime whose rules decide on the role ------------------------------------------

ALLOWED = "myns"


@pytest.fixture(scope="module")
def role_runtime(runtime: deployment.Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[deployment.Runtime]:
    """A second replica whose rules admit ``SA_ROLE`` only, so the minted ``sub`` carries the role."""
    deployed = runtime.deployment
    deployed.plane.create_namespace(ALLOWED)
    replica = deployed.runtime(tmp_path_factory.mktemp("role-runtime"))
    replica.config["endpoints"][0]["azRules"] = [
        {"scope": "filter", "constraint": f"(&(namespace={ALLOWED})(role={SA_ROLE}))"}
    ]
    replica.config_file.write_text(json.dumps(replica.config))
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


def bound_account(plane: cluster.ControlPlane, namespace: str, role: str) -> None:
    plane.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "irsa", "namespace": namespace, "annotations": {config.EKS_ROLE_ANNOTATION: role}},
        }
    )


def irsa_pod(namespace: str, name: str, role: str | None = None) -> dict[str, Any]:
    """The seed's Pod under ServiceAccount ``irsa``: our label, and no role of its own unless ``role``."""
    pod = named(seed_pod(), namespace, name)
    pod["spec"]["serviceAccountName"] = "irsa"
    del pod["metadata"]["annotations"]["tremolo.io/aws-role"]
    if role is not None:
        pod["metadata"]["annotations"]["tremolo.io/aws-role"] = role
    return pod


def exchange(replica: deployment.Runtime, token: str) -> tuple[int, Any]:
    return replica.post("/aws/token", headers={"Authorization": f"Bearer {token}"})


def test_the_service_accounts_role_at_admission(runtime: deployment.Runtime, namespace: str) -> None:
    plane = runtime.deployment.plane
    bound_account(plane, namespace, SA_ROLE)
    stored = create(plane, namespace, irsa_pod(namespace, "irsa"))
    assert env_of(containers(stored)["aws-cli"])["AWS_ROLE_ARN"] == SA_ROLE
    assert "kube-sts-aws" in containers(stored)
    refused = create(plane, namespace, irsa_pod(namespace, "claims-another", ROLE), check=False)
    assert refused.returncode != 0
    assert (
        "kube-sts: the Pod's annotation tremolo.io/aws-role names another role than its ServiceAccount's "
        f"eks.amazonaws.com/role-arn ('{SA_ROLE}')"
    ) in refused.stderr


def test_the_service_accounts_role_at_exchange(role_runtime: deployment.Runtime) -> None:
    plane = role_runtime.deployment.plane
    audience = role_runtime.config["stsAudience"]
    bound_account(plane, ALLOWED, SA_ROLE)
    stored = create(plane, ALLOWED, irsa_pod(ALLOWED, "irsa-exchange"))
    status, answer = exchange(role_runtime, plane.token(ALLOWED, "irsa", audience, pod=stored))
    assert status == 200, answer
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["sub"] == f"{role_runtime.config['cluster']}:{ALLOWED}:irsa:{SA_ROLE}"
    # the Pod names another role after its admission (annotations are mutable): refused
    plane.kubectl("annotate", "pod", "irsa-exchange", f"--namespace={ALLOWED}", f"tremolo.io/aws-role={ROLE}")
    status, answer = exchange(role_runtime, plane.token(ALLOWED, "irsa", audience, pod=stored))
    assert (status, answer["error"]) == (403, "role_conflict"), answer
    plane.kubectl("annotate", "pod", "irsa-exchange", f"--namespace={ALLOWED}", "tremolo.io/aws-role-")
    # the ServiceAccount's binding is read live: rebound to a role the rules do not admit, refused
    bound_account(plane, ALLOWED, ROLE)
    status, answer = exchange(role_runtime, plane.token(ALLOWED, "irsa", audience, pod=stored))
    assert (status, answer["error"]) == (403, "denied"), answer


def test_the_pods_token_lifetime_at_exchange(role_runtime: deployment.Runtime) -> None:
    plane = role_runtime.deployment.plane
    pod = named(seed_pod(), ALLOWED, "short-lifetime")
    pod["metadata"]["annotations"].update({"tremolo.io/aws-role": SA_ROLE, config.LIFETIME_ANNOTATION: "15m"})
    pod["spec"]["serviceAccountName"] = "app"
    stored = create(plane, ALLOWED, pod)
    status, answer = exchange(role_runtime, plane.token(ALLOWED, "app", role_runtime.config["stsAudience"], pod=stored))
    assert status == 200, answer
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == answer["expires_in"] == 900


def test_the_webhook_reads_the_service_account_live(runtime: deployment.Runtime, namespace: str) -> None:
    plane = runtime.deployment.plane
    bound_account(plane, namespace, SA_ROLE)
    first = create(plane, namespace, irsa_pod(namespace, "before"))
    assert env_of(containers(first)["aws-cli"])["AWS_ROLE_ARN"] == SA_ROLE
    # the binding changes: the next Pod follows it, and a Pod that claims the old role is refused
    bound_account(plane, namespace, ROLE)
    again = create(plane, namespace, irsa_pod(namespace, "after"))
    assert env_of(containers(again)["aws-cli"])["AWS_ROLE_ARN"] == ROLE
    refused = create(plane, namespace, irsa_pod(namespace, "claims-the-old-role", SA_ROLE), check=False)
    assert refused.returncode != 0
    assert "names another role than its ServiceAccount's eks.amazonaws.com/role-arn" in refused.stderr


def test_a_missing_service_account_binds_nothing(runtime: deployment.Runtime, namespace: str) -> None:
    """The API server's ServiceAccount admission refuses such a Pod before webhooks run, so the
    review is posted to the runtime straight; its read of the ServiceAccount is the real 404."""
    pod = named(seed_pod(), namespace, "no-account")
    pod["spec"]["serviceAccountName"] = "missing"
    assert runtime.deployment.plane.get("serviceaccount", "missing", namespace) is None
    status, answer = runtime.post(
        "/mutate/aws", review_body(pod, namespace=namespace), {"Content-Type": "application/json"}
    )
    assert status == 200, answer
    assert answer["response"]["allowed"] is True, answer
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(answer["response"]["patch"])))
    validate(patched)
    assert env_of(patched["spec"]["containers"][0])["AWS_ROLE_ARN"] == ROLE
