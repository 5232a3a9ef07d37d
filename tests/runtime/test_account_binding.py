"""At exchange, the token service reads the same sources as the webhook: the role bound by the
Pod's ServiceAccount (which wins over the Pod's own annotation) and the Pod's token lifetime."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import jwt
import pytest

from kube_sts.runtime import config, server
from kube_sts.runtime.kube import api as kubeapi
from tests import apiserver
from tests.runtime import harness
from tests.runtime.test_token_service import exchange

BOUND = "arn:aws:iam::123456789012:role/bound"
OTHER = "arn:aws:iam::123456789012:role/other"


@pytest.fixture
def app(kube: kubeapi.KubeAPI, tmp_path: pathlib.Path) -> Iterator[server.App]:
    harness.write_keyset(tmp_path, "aws", "RS256")
    rule = "(&(namespace=myns)(role=arn:aws:iam::123456789012:role/*))"
    application = harness.make_app(harness.runtime_config(harness.endpoint(rules=[rule])), kube, tmp_path)
    yield application
    application.executor.shutdown(wait=True)


def token_for(
    api_server: apiserver.APIServer, pod_annotations: dict[str, str], account: dict[str, str] | None = None
) -> str:
    if account is not None:
        api_server.add_service_account("myns", "app", account)
    pod = api_server.add_pod("myns", "app-1", annotations=pod_annotations, service_account="app")
    return api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE])


def minted(answer: harness.Answer) -> dict[str, object]:
    assert answer.status == 200, answer.body
    claims: dict[str, object] = jwt.decode(answer.json()["token"], options={"verify_signature": False})
    return claims


@pytest.mark.parametrize("key", [config.EKS_ROLE_ANNOTATION, "tremolo.io/aws-role"])
def test_the_service_accounts_role_is_the_callers_role(
    api_server: apiserver.APIServer, app: server.App, key: str
) -> None:
    claims = minted(exchange(app, token_for(api_server, {}, {key: BOUND})))
    assert claims["sub"] == f"test-cluster:myns:app:{BOUND}"
    [read] = api_server.requests_to("/api/v1/namespaces/myns/serviceaccounts/app")
    assert "PartialObjectMetadata" in read.headers["accept"]


def test_without_a_binding_the_pods_annotation_is_the_role(api_server: apiserver.APIServer, app: server.App) -> None:
    claims = minted(exchange(app, token_for(api_server, {"tremolo.io/aws-role": OTHER}, {})))
    assert claims["sub"] == f"test-cluster:myns:app:{OTHER}"


def test_a_pod_cannot_claim_another_role_than_its_service_account(
    api_server: apiserver.APIServer, app: server.App
) -> None:
    token = token_for(api_server, {"tremolo.io/aws-role": OTHER}, {config.EKS_ROLE_ANNOTATION: BOUND})
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (403, "role_conflict"), answer.body
    assert [line["reason"] for line in harness.audit_lines(app)] == ["role_conflict"]


def test_a_service_account_deleted_after_the_review_is_refused(
    api_server: apiserver.APIServer, app: server.App
) -> None:
    token = token_for(api_server, {"tremolo.io/aws-role": OTHER}, {})
    api_server.delete("v1", "serviceaccounts", "myns", "app")
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "invalid_token"), answer.body


@pytest.mark.parametrize(("value", "seconds"), [("900", 900), ("15m", 900), ("600", 600), ("1h", 3600)])
def test_the_pods_token_lifetime_is_the_minted_tokens(
    api_server: apiserver.APIServer, app: server.App, value: str, seconds: int
) -> None:
    answer = exchange(app, token_for(api_server, {"tremolo.io/aws-role": BOUND, config.LIFETIME_ANNOTATION: value}))
    claims = minted(answer)
    assert claims["exp"] == claims["iat"] + seconds == answer.json()["expires_at"]  # type: ignore[operator]
    assert answer.json()["expires_in"] == seconds


@pytest.mark.parametrize("value", ["599", "3601", "1d", "soon"])
def test_a_token_lifetime_outside_the_bounds_is_refused(
    api_server: apiserver.APIServer, app: server.App, value: str
) -> None:
    """Only a Pod whose annotation was edited after admission gets here: the webhook refuses it first."""
    answer = exchange(app, token_for(api_server, {"tremolo.io/aws-role": BOUND, config.LIFETIME_ANNOTATION: value}))
    assert (answer.status, answer.json()["error"]) == (403, "invalid_lifetime"), answer.body
    assert "from 600 to 3600 seconds" in answer.json()["message"]
