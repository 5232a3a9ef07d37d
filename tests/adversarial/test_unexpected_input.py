"""Hostile tokens and unexpected failures end in a documented JSON answer and an audit line."""

from __future__ import annotations

import asyncio
import base64
import logging
import pathlib
from typing import Any

import pytest

from harness import runtime as harness
from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi


def segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def app(tmp_path: pathlib.Path) -> server.App:
    """No API server: these answers come before any Kubernetes call (the unexpected failure on a
    real token is tests/controlplane/test_token_decisions.py)."""
    runtime = harness.runtime_config(harness.endpoint())
    harness.write_keyset(tmp_path, "aws", "RS256")
    return harness.make_app(runtime, kubeapi.KubeAPI.for_host("http://127.0.0.1:9", timeout=0.5), tmp_path)


@pytest.mark.parametrize("payload", [b"[" * 5000 + b"]" * 5000, b'{"":' * 2000 + b"1" + b"}" * 2000])
def test_a_deeply_nested_token_payload_is_a_malformed_token(app: server.App, payload: bytes) -> None:
    token = f"{segment(b'{}')}.{segment(payload)}.{segment(b'sig')}"
    answer = harness.asgi_call(app, "POST", "/aws/token", {"authorization": f"Bearer {token}"})
    assert (answer.status, answer.json()["error"]) == (401, "malformed_token")
    [line] = harness.audit_lines(app)
    assert (line["decision"], line["reason"]) == ("deny", "malformed_token")


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
