"""Header floods: refused before any per-header work, by the application and by the connection."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from harness import attacks
from harness import runtime as harness
from harness.attacks import Runtime
from kube_sts.runtime import server
from kube_sts.runtime.http import limits
from kube_sts.runtime.kube import api as kubeapi


class CountingBytes(bytes):
    """A header name or value that counts how often it is decoded."""

    decoded = 0

    def decode(self, *args: Any, **kwargs: Any) -> str:
        CountingBytes.decoded += 1
        return super().decode(*args, **kwargs)


def call(app: server.App, headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]]:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/aws/token",
        "headers": headers,
        "client": ("127.0.0.1", 1),
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.fixture
def app(tmp_path: pathlib.Path) -> server.App:
    runtime = harness.runtime_config(harness.endpoint())
    harness.write_keyset(tmp_path, "aws", "RS256")
    return harness.make_app(runtime, kubeapi.KubeAPI.for_host("http://127.0.0.1:9", timeout=0.5), tmp_path)


def test_a_repeated_header_flood_is_refused_before_any_header_is_decoded(app: server.App) -> None:
    # 1 MiB of repeated 16-byte headers, the shape that used to be merged quadratically.
    CountingBytes.decoded = 0
    flood = [(CountingBytes(b"x"), CountingBytes(b"0123456789abcde"))] * 65536
    status, body = call(app, flood)
    assert (status, body["error"]) == (413, "header_too_large")
    assert CountingBytes.decoded == 0


def test_repeated_headers_under_the_limit_are_joined_in_order() -> None:
    raw = [(b"x", b"%d" % i) for i in range(2000)] + [(b"Accept", b"a"), (b"accept", b"b")]
    headers = limits.request_headers(raw)
    assert headers["x"] == ",".join(str(i) for i in range(2000))
    assert headers["accept"] == "a,b"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with attacks.runtime_process(tmp_path_factory.mktemp("runtime")) as service:
        yield service


def test_the_connection_refuses_a_header_block_before_it_ends(runtime: Runtime) -> None:
    """Repeats or one huge header: the answer comes while the client is still sending, so no
    header block past the limit is ever parsed or held (the server used to read all of it)."""
    context = runtime.client_context()
    for header in (b"x: 0123456789a\r\n", b""):
        status, body, sent = attacks.header_flood(context, runtime.port, 8 * 1024 * 1024, header=header, timeout=60)
        print(f"header {header!r}: answered {status} after {sent} of {8 * 1024 * 1024} bytes")
        assert (status, json.loads(body)["error"]) == (413, "header_too_large")
        assert sent < 4 * 1024 * 1024
    assert attacks.get(context, runtime.port, "/healthz")[0] == 200


def test_unparsable_requests_get_a_json_answer(runtime: Runtime) -> None:
    with attacks.tls_connect(runtime.client_context(), runtime.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nbad header\r\n\r\n")
        status, body = attacks.status_and_body(attacks.read_answer(sock, 10))
    assert (status, json.loads(body)["error"]) == (400, "bad_request")
