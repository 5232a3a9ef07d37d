"""The token service's decisions against the real API server: the ASGI app driven straight, its
Kubernetes client the rendered ServiceAccount (``runtime_kube``), the tokens TokenRequests bound to
real Pods. What needs an API server that fails, is slow, records requests or issues tokens the real
one will not (expired, seconds-long, a review that contradicts the token) stays in
tests/runtime/test_token_service.py on the double."""

from __future__ import annotations

import itertools
import json
import logging
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from harness import runtime as harness
from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tokens import minter
from tests.controlplane import cluster
from tests.controlplane.test_exchange import create_pod

ROLE = "arn:aws:iam::123456789012:role/app"
_pods = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_pods)}"


@pytest.fixture
def keys_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    harness.write_keyset(tmp_path, "aws", "RS256")
    return tmp_path


@pytest.fixture
def app(runtime_kube: kubeapi.KubeAPI, keys_dir: pathlib.Path) -> Iterator[server.App]:
    runtime = harness.runtime_config(harness.endpoint(rules=["(&(namespace=myns)(role=arn:aws:iam::*:role/app))"]))
    application = harness.make_app(runtime, runtime_kube, keys_dir)
    yield application
    application.executor.shutdown(wait=True)


def pod_token(plane: cluster.ControlPlane, namespace: str = "myns", role: str | None = ROLE) -> str:
    """A TokenRequest for our audience bound to a new Pod of ServiceAccount ``app`` (role annotation ``role``)."""
    annotations = {"tremolo.io/aws-role": role} if role else {}
    pod = create_pod(plane, namespace, unique("app"), labelled=False, annotations=annotations)
    return plane.token(namespace, "app", harness.STS_AUDIENCE, pod=pod)


def pod_name(token: str) -> str:
    """The name of the Pod a projected token is bound to."""
    claims = jwt.decode(token, options={"verify_signature": False})
    name: str = claims["kubernetes.io"]["pod"]["name"]
    return name


def exchange(app: server.App, token: str | None, path: str = "/aws/token") -> harness.Answer:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return harness.asgi_call(app, "POST", path, headers)


def test_exchange_mints_a_token(plane: cluster.ControlPlane, app: server.App, caplog: pytest.LogCaptureFixture) -> None:
    token = pod_token(plane)
    with caplog.at_level(logging.INFO, logger="kube_sts.audit"):
        answer = exchange(app, token)
    assert answer.status == 200, answer.body
    body = answer.json()
    assert set(body) == {"token", "expires_at", "expires_in"}
    assert body["expires_in"] == 3600
    header = jwt.get_unverified_header(body["token"])
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert header["typ"] == "JWT" and header["alg"] == "RS256"
    assert header["kid"] == app.keys.provider("aws").signing_key().kid
    assert claims["iss"] == "https://issuer.example"
    assert claims["aud"] == "sts.amazonaws.com"
    assert claims["sub"] == f"test-cluster:myns:app:{ROLE}"  # the rules decide on role: sub carries it
    assert (claims["cluster"], claims["namespace"], claims["saname"]) == ("test-cluster", "myns", "app")
    assert claims["exp"] == body["expires_at"] == claims["iat"] + 3600 and claims["nbf"] == claims["iat"]
    assert all(type(claims[c]) is int for c in ("iat", "nbf", "exp"))
    assert minter.AWS_TAGS not in claims
    records = harness.audit_lines(app)
    assert records == [
        {
            "time": claims["iat"], "event": "token", "endpoint": "aws",
            "namespace": "myns", "serviceaccount": "app", "pod": pod_name(token),
            "decision": "allow", "reason": "ok", "kid": header["kid"], "jti": claims["jti"], "exp": claims["exp"],
        }
    ]  # fmt: skip
    logged = caplog.text + json.dumps(records)
    assert token not in logged and body["token"] not in logged
    assert token.split(".")[2] not in logged and body["token"].split(".")[2] not in logged


def test_api_server_audience_token_is_401(plane: cluster.ControlPlane, app: server.App) -> None:
    pod = create_pod(plane, "myns", unique("api-audience"), labelled=False, annotations={"tremolo.io/aws-role": ROLE})
    token = plane.token("myns", "app", cluster.API_AUDIENCE, pod=pod)  # the API server's audience
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "wrong_audience")


def test_unbound_token_is_401(plane: cluster.ControlPlane, app: server.App) -> None:
    token = plane.token("myns", "app", harness.STS_AUDIENCE)
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "unbound_token")


def test_unknown_token_is_401(plane: cluster.ControlPlane, app: server.App) -> None:
    forged = jwt.encode({"aud": [harness.STS_AUDIENCE], "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
    answer = exchange(app, forged)
    assert (answer.status, answer.json()["error"]) == (401, "invalid_token")


@pytest.mark.parametrize(
    ("namespace", "role"),
    [("denied", ROLE), ("myns", None), ("myns", "arn:aws:iam::123456789012:role/admin")],
)
def test_rules_deny_with_403(
    plane: cluster.ControlPlane, app: server.App, namespace: str, role: str | None, denied: str
) -> None:
    token = pod_token(plane, namespace=namespace, role=role)
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (403, "denied")
    assert "aws" in answer.json()["message"] and "namespace" not in answer.json()["message"]
    [record] = harness.audit_lines(app)
    assert (record["decision"], record["reason"], record["namespace"], record["kid"]) == (
        "deny",
        "denied",
        namespace,
        None,
    )


def test_no_rules_means_deny(
    plane: cluster.ControlPlane, runtime_kube: kubeapi.KubeAPI, keys_dir: pathlib.Path
) -> None:
    runtime = harness.runtime_config(harness.endpoint(rules=()))
    app = harness.make_app(runtime, runtime_kube, keys_dir)
    answer = exchange(app, pod_token(plane))
    assert (answer.status, answer.json()["error"]) == (403, "denied")


def test_subject_template_and_session_tags(
    plane: cluster.ControlPlane, runtime_kube: kubeapi.KubeAPI, keys_dir: pathlib.Path
) -> None:
    ep = harness.endpoint(
        rules=["(saname=app)"], subject="system:{cluster}/{namespace}/{saname}/{pod}", session_tags=True
    )
    app = harness.make_app(harness.runtime_config(ep), runtime_kube, keys_dir)
    token = pod_token(plane)
    answer = exchange(app, token)
    claims = jwt.decode(answer.json()["token"], options={"verify_signature": False})
    assert claims["sub"] == f"system:test-cluster/myns/app/{pod_name(token)}"
    assert claims[minter.AWS_TAGS] == {
        "principal_tags": {"cluster": ["test-cluster"], "namespace": ["myns"], "saname": ["app"]},
        "transitive_tag_keys": ["cluster", "namespace", "saname"],
    }


def test_an_unexpected_failure_is_a_json_500_with_an_audit_line(
    plane: cluster.ControlPlane, app: server.App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(app.kube, "token_review", broken)
    # a token the cluster really signed, so it passes the local checks and reaches the review
    token = pod_token(plane)
    with caplog.at_level(logging.ERROR):
        answer = harness.asgi_call(app, "POST", "/aws/token", {"authorization": f"Bearer {token}"})
    assert answer.status == 500
    assert answer.json() == {"error": "internal_error", "message": "internal error; see the server log"}
    assert "secret detail" in caplog.text and b"secret" not in answer.body
    [line] = harness.audit_lines(app)
    assert (line["decision"], line["reason"]) == ("error", "internal_error")
