"""Token exchange with real projected tokens: TokenRequests bound to real Pods, the runtime's
TokenReview and Pod lookup against the real API server, and botocore accepting the minted token."""

from __future__ import annotations

import json
import os
import pathlib
import ssl
import time
from collections.abc import Iterator
from typing import Any

import botocore.session
import jwt
import pytest

from harness.reviews import ROLE, seed_pod
from tests import awssts
from tests.controlplane import cluster, deployment
from tests.controlplane.test_admission import named


@pytest.fixture
def allowed(myns: str) -> str:
    """The namespace the AWS example's azRules admit: (namespace=myns)."""
    return myns


def create_pod(
    plane: cluster.ControlPlane,
    namespace: str,
    name: str,
    *,
    labelled: bool = True,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The seed's Pod as ServiceAccount ``app``; unlabelled, it does not go through our webhook.
    ``annotations`` replace the seed's (its role annotation)."""
    pod = named(seed_pod(), namespace, name)
    if not labelled:
        del pod["metadata"]["labels"]["tremolo.io/aws-role"]
    if annotations is not None:
        pod["metadata"]["annotations"] = dict(annotations)
    pod["spec"]["serviceAccountName"] = "app"
    answer = plane.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(pod))
    stored: dict[str, Any] = json.loads(answer.stdout)
    return stored


def exchange(runtime: deployment.Runtime, token: str) -> tuple[int, Any]:
    return runtime.post("/aws/token", headers={"Authorization": f"Bearer {token}"})


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield


def test_projected_token_is_exchanged_and_accepted_by_botocore(
    runtime: deployment.Runtime,
    allowed: str,
    aws_environment: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    plane = runtime.deployment.plane
    pod = create_pod(plane, allowed, "exchange")
    sa_token = plane.token(allowed, "app", runtime.config["stsAudience"], pod=pod)
    status, answer = exchange(runtime, sa_token)
    assert status == 200, answer
    minted = claims(answer["token"])
    assert minted["sub"] == f"{runtime.config['cluster']}:{allowed}:app"
    assert minted["aud"] == "sts.aws.com" and minted["namespace"] == allowed

    # the AWS STS double fetches the issuer documents from the runtime, trusting the caBundle
    fetch = runtime.client_context()
    fetch.check_hostname = False  # the runtime's certificate names the Service, not its ClusterIP
    with awssts.AWSSTS() as sts:
        sts.add_provider(awssts.Provider(minted["iss"], ("sts.aws.com",), runtime.base + "/aws", fetch))
        awssts.web_identity_environment(monkeypatch, tmp_path, sts.url, answer["token"], ROLE)
        credentials = botocore.session.Session().get_credentials()
        assert credentials is not None and credentials.method == "assume-role-with-web-identity"
        frozen = credentials.get_frozen_credentials()
        assert sts.errors == [] and frozen.access_key == sts.calls[0].access_key_id
        assert sts.calls[0].claims["sub"] == minted["sub"]


def test_api_server_audience_is_refused(runtime: deployment.Runtime, allowed: str) -> None:
    plane = runtime.deployment.plane
    pod = create_pod(plane, allowed, "api-audience")
    token = plane.token(allowed, "app", cluster.API_AUDIENCE, pod=pod)
    status, answer = exchange(runtime, token)
    assert (status, answer["error"]) == (401, "wrong_audience"), answer


def test_unbound_token_is_refused(runtime: deployment.Runtime, allowed: str) -> None:
    plane = runtime.deployment.plane
    token = plane.token(allowed, "app", runtime.config["stsAudience"])
    status, answer = exchange(runtime, token)
    assert (status, answer["error"]) == (401, "unbound_token"), answer


def test_denied_namespace_is_refused(runtime: deployment.Runtime, namespace: str) -> None:
    plane = runtime.deployment.plane
    pod = create_pod(plane, namespace, "denied")
    status, answer = exchange(runtime, plane.token(namespace, "app", runtime.config["stsAudience"], pod=pod))
    assert (status, answer["error"]) == (403, "denied"), answer


def test_deleted_and_recreated_pod(runtime: deployment.Runtime, allowed: str) -> None:
    """A deleted Pod's token is refused within the runtime's validation cache time (5 s) plus the
    request that notices; a Pod re-created under the same name does not revive the old token."""
    plane = runtime.deployment.plane
    pod = create_pod(plane, allowed, "short-lived")
    token = plane.token(allowed, "app", runtime.config["stsAudience"], pod=pod)
    assert exchange(runtime, token)[0] == 200
    plane.kubectl("delete", "pod", "short-lived", f"--namespace={allowed}", "--wait=true")
    deleted = time.monotonic()
    while (answer := exchange(runtime, token))[0] == 200:
        assert time.monotonic() - deleted < 15, "the deleted Pod's token is still exchanged"
        time.sleep(0.25)
    window = time.monotonic() - deleted
    print(f"deleted Pod's token refused {window:.1f} s after the deletion: {answer}")
    assert answer[0] == 401 and answer[1]["error"] in {"invalid_token", "pod_not_found"}

    again = create_pod(plane, allowed, "short-lived")
    assert again["metadata"]["uid"] != pod["metadata"]["uid"]
    status, refused = exchange(runtime, token)
    # refused: as pod_mismatch by the uid check, or from the runtime's memory of the refusal above
    assert status == 401 and refused["error"] in {"invalid_token", "pod_mismatch", "pod_not_found"}, refused
    # ...while a token bound to the new Pod works
    fresh = plane.token(allowed, "app", runtime.config["stsAudience"], pod=again)
    assert exchange(runtime, fresh)[0] == 200


def test_context_trusts_only_the_ca_bundle(runtime: deployment.Runtime) -> None:
    """The client of these tests refuses a server that the caBundle does not vouch for."""
    other = ssl.create_default_context()  # the system's trust store only
    connection = deployment.ServiceConnection(runtime.host, runtime.port, runtime.service_name, other)
    with pytest.raises(ssl.SSLCertVerificationError):
        connection.connect()
