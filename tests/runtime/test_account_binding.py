"""At exchange, the token service reads the Pod's ServiceAccount; what only the API server double
can show stays here: the read is metadata only (the request log's Accept header), and a
ServiceAccount deleted after the TokenReview (the real TokenReview refuses the token of a deleted
ServiceAccount itself, and the runtime's review cache also keeps the read). The role bound by the
ServiceAccount and the Pod's token lifetime at exchange run against the real API server in
tests/controlplane/test_exchange_account_binding.py."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import jwt
import pytest

from harness import apiserver
from harness import runtime as harness
from kube_sts.runtime import config, server
from kube_sts.runtime.kube import api as kubeapi
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


def test_the_service_account_is_read_as_metadata_only(api_server: apiserver.APIServer, app: server.App) -> None:
    answer = exchange(app, token_for(api_server, {}, {config.EKS_ROLE_ANNOTATION: BOUND}))
    assert answer.status == 200, answer.body
    claims = jwt.decode(answer.json()["token"], options={"verify_signature": False})
    assert claims["sub"] == f"test-cluster:myns:app:{BOUND}"
    [read] = api_server.requests_to("/api/v1/namespaces/myns/serviceaccounts/app")
    assert "PartialObjectMetadata" in read.headers["accept"]


def test_a_service_account_deleted_after_the_review_is_refused(
    api_server: apiserver.APIServer, app: server.App
) -> None:
    token = token_for(api_server, {"tremolo.io/aws-role": OTHER}, {})
    api_server.delete("v1", "serviceaccounts", "myns", "app")
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (401, "invalid_token"), answer.body
