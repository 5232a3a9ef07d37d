"""The ``gcp`` preset end to end against the real API server: the endpoint compiled from
examples/gcp/values.yaml served by a runtime process of this module's own (as ServiceAccount
kube-sts, with the example's Role on its key Secret), the AdmissionReview answered, the patched Pod
created on the real API server, the injected sidecar as a process exchanging a TokenRequest bound
to that Pod, and google-auth's ``identity_pool`` credentials built from the injected files alone
(``GOOGLE_APPLICATION_CREDENTIALS`` and the configuration the sidecar wrote), which obtain an
access token from the verifying Google STS double (``tests/gcpsts.py``)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import google.auth.identity_pool
import google.auth.transport.requests
import pytest
import requests
import yaml

from harness import runtime as harness
from kube_sts.runtime.webhook import injection
from tests import gcpsts
from tests.controlplane import cluster, deployment
from tests.controlplane.test_exchange import claims

EXAMPLE = deployment.EXAMPLES / "gcp"
NAMESPACE = "analytics"
ACCOUNT = "reports"
"""The namespace and the ServiceAccount the example's azRules admit."""
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
SERVICE_ACCOUNT = "reader@my-project.iam.gserviceaccount.com"


def example_documents(directory: pathlib.Path) -> list[dict[str, Any]]:
    stream = deployment.compile_example(EXAMPLE, directory)
    return [d for d in yaml.safe_load_all(stream) if d]


@pytest.fixture(scope="module")
def google_sts(tls: harness.TLSFiles) -> Iterator[gcpsts.GoogleSTS]:
    with gcpsts.GoogleSTS(tls.server_context()) as double:
        yield double


@pytest.fixture(scope="module")
def gcp_runtime(
    deployed: deployment.Deployment, google_sts: gcpsts.GoogleSTS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[deployment.Runtime]:
    """A runtime process with the example's ``gcp`` endpoint (its token URL the double's), given
    the example's Role (its key Secret) under another name beside the AWS example's."""
    plane = deployed.plane
    directory = tmp_path_factory.mktemp("gcp-runtime")
    documents = example_documents(directory / "manifests")
    for kind in ("Role", "RoleBinding"):
        [document] = [d for d in documents if d["kind"] == kind]
        document["metadata"]["name"] = "kube-sts-gcp-example"
        if kind == "RoleBinding":
            document["roleRef"]["name"] = "kube-sts-gcp-example"
        plane.apply(document)
    [configmap] = [d for d in documents if d["kind"] == "ConfigMap"]
    [endpoint] = json.loads(configmap["data"]["config.json"])["endpoints"]
    endpoint["gcp"]["tokenUrl"] = google_sts.token_url
    endpoint["issuer"]["keys"]["waitForPublication"] = False  # the example's issuer host is not reachable
    plane.create_namespace(NAMESPACE)
    plane.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": NAMESPACE}})
    replica = deployed.runtime(directory / "runtime")
    replica.config["endpoints"] = [endpoint]
    replica.config_file.write_text(json.dumps(replica.config))
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


def pod(identity: str, name: str = "reader") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"tremolo.io/gcp-identity": "true"},
            "annotations": {"tremolo.io/gcp-identity": identity},
        },
        "spec": {"serviceAccountName": ACCOUNT, "containers": [{"name": "app", "image": "python:3.11-slim"}]},
    }


def admitted(runtime: deployment.Runtime, identity: str, name: str = "reader") -> dict[str, Any]:
    return deployment.admit(runtime, "gcp", pod(identity, name), "gcp-1")


def test_google_auth_obtains_a_token_from_the_injected_files_alone(
    gcp_runtime: deployment.Runtime, google_sts: gcpsts.GoogleSTS, tls: harness.TLSFiles, tmp_path: pathlib.Path
) -> None:
    plane: cluster.ControlPlane = gcp_runtime.deployment.plane
    endpoint = gcp_runtime.config["endpoints"][0]
    provider = endpoint["gcp"]["provider"]
    issuer_host = endpoint["issuer"]["host"]
    patched = admitted(gcp_runtime, "true")
    [side] = patched["spec"]["initContainers"]
    [app] = patched["spec"]["containers"]
    app_env = {e["name"]: e["value"] for e in app["env"]}
    assert app_env == {
        "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/secrets/kube-sts/gcp/credential-configuration.json",
        "KUBE_STS_TOKEN_FILE": "/var/run/secrets/kube-sts/gcp/token",
        "KUBE_STS_IDENTITY": "true",
    }
    assert {"name": "kube-sts-gcp-token", "mountPath": "/var/run/secrets/kube-sts/gcp", "readOnly": True} in app[
        "volumeMounts"
    ]
    # the patched Pod, stored by the real API server (unlabelled for the tier's AWS webhook)
    answer = plane.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(patched))
    stored = json.loads(answer.stdout)
    assert [c["name"] for c in stored["spec"]["initContainers"]] == [side["name"]]

    # The Pod's files mapped into the temp directory (every /var/run/secrets/ path, also inside the
    # sidecar's variables), the Service URL mapped to the runtime's local port.
    sa_token = plane.token(NAMESPACE, ACCOUNT, gcp_runtime.config["stsAudience"], pod=stored)
    injected = deployment.InjectedSidecar(gcp_runtime, side, tmp_path / "pod", sa_token)
    base, local = injected.base, injected.local
    process = injected.start()
    try:
        configuration = pathlib.Path(local(app_env["GOOGLE_APPLICATION_CREDENTIALS"]))
        assert oct(configuration.stat().st_mode & 0o777) == "0o644"
        minted = claims(pathlib.Path(local(app_env["KUBE_STS_TOKEN_FILE"])).read_text())
        assert minted["aud"] == "https://iam.googleapis.com/" + provider and minted["iss"] == f"https://{issuer_host}"

        resource = "//iam.googleapis.com/" + provider
        google_sts.add_provider(
            gcpsts.Provider(resource, f"https://{issuer_host}", base + "/gcp", gcp_runtime.client_context())
        )
        credentials = google.auth.identity_pool.Credentials.from_file(  # type: ignore[no-untyped-call]
            str(configuration), scopes=[CLOUD_PLATFORM]
        )
        session = requests.Session()
        session.verify, session.trust_env = str(tls.ca), False
        credentials.refresh(google.auth.transport.requests.Request(session))
        assert google_sts.errors == []
        [call] = google_sts.calls
        assert credentials.valid and credentials.token == call.access_token
        subject = f"{gcp_runtime.config['cluster']}:{NAMESPACE}:{ACCOUNT}"
        assert call.provider == resource and call.claims["sub"] == subject
        assert credentials.service_account_email is None  # direct resource access
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_a_service_account_annotation_is_impersonated(gcp_runtime: deployment.Runtime) -> None:
    [side] = admitted(gcp_runtime, SERVICE_ACCOUNT, "impersonating")["spec"]["initContainers"]
    document = json.loads({e["name"]: e["value"] for e in side["env"]}[injection.CREDENTIAL_CONFIG_ENV])
    credentials = google.auth.identity_pool.Credentials.from_info(document)  # type: ignore[no-untyped-call]
    assert credentials.service_account_email == SERVICE_ACCOUNT
    assert document["credential_source"] == {"file": "/var/run/secrets/kube-sts/gcp/token", "format": {"type": "text"}}
