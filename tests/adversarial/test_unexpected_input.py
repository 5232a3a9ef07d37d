"""Hostile tokens and unexpected failures end in a documented JSON answer and an audit line."""

from __future__ import annotations

import asyncio
import base64
import logging
import pathlib
from typing import Any

import pytest

from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi
from tests import apiserver
from tests.runtime import harness


def segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def app(kube: kubeapi.KubeAPI, tmp_path: pathlib.Path) -> server.App:
    runtime = harness.runtime_config(harness.endpoint())
    harness.write_keyset(tmp_path, "aws", "RS256")
    return harness.make_app(runtime, kube, tmp_path)


@pytest.mark.parametrize("payload", [b"[" * 5000 + b"]" * 5000, b'{"":' * 2000 + b"1" + b"}" * 2000])
def test_a_deeply_nested_token_payload_is_a_malformed_token(app: server.App, payload: bytes) -> None:
    token = f"{segment(b'{}')}.{segment(payload)}.{segment(b'sig')}"
    answer = harness.asgi_call(app, "POST", "/aws/token", {"authorization": f"Bearer {token}"})
    assert (answer.status, answer.json()["error"]) == (401, "malformed_token")
    [line] = harness.audit_lines(app)
    assert (line["decision"], line["reason"]) == ("deny", "malformed_token")


def test_an_unexpected_failure_is_a_json_500_with_an_audit_line(
    app: server.App, api_server: apiserver.APIServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(app.kube, "token_review", broken)
    # a token the cluster really signed, so it passes the local checks and reaches the review
    pod = api_server.add_pod("myns", "app-1")
    token = api_server.issue_token("myns", "app", pod=pod, audiences=["kube-sts"])
    with caplog.at_level(logging.ERROR):
        answer = harness.asgi_call(app, "POST", "/aws/token", {"authorization": f"Bearer {token}"})
    assert answer.status == 500
    assert answer.json() == {"error": "internal_error", "message": "internal error; see the server log"}
    assert "secret detail" in caplog.text and b"secret" not in answer.body
    [line] = harness.audit_lines(app)
    assert (line["decision"], line["reason"]) == ("error", "internal_error")


def test_a_failure_outside_any_route_is_a_json_500(app: server.App, caplog: pytest.LogCaptureFixture) -> None:
    scope = {"type": "http", "method": "GET", "path": "/nowhere", "headers": [], "client": ("127.0.0.1", 1)}
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        raise RuntimeError("the connection broke oddly")

    async def send(message: Any) -> None:
        sent.append(message)

    with caplog.at_level(logging.ERROR):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 500 and b'"internal_error"' in sent[1]["body"]
    assert "the connection broke oddly" in caplog.text
