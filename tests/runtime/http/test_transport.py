"""One write per response: the coalescing transport alone, then uvicorn over TLS counting records."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import ssl
from typing import Any

import pytest

from harness import runtime as harness
from kube_sts.runtime.http import transport
from kube_sts.runtime.kube import api as kubeapi


class RecordingTransport:
    """The transport methods the wrapper touches, recording what reaches the wire."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.closed_with: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.closed_with = list(self.written)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default


def coalescing(recording: RecordingTransport, loop: asyncio.AbstractEventLoop) -> transport.CoalescingTransport:
    return transport.CoalescingTransport(recording, loop)  # type: ignore[arg-type]


def test_writes_in_one_loop_turn_reach_the_transport_as_one() -> None:
    async def scenario() -> RecordingTransport:
        recording = RecordingTransport()
        wrapper = coalescing(recording, asyncio.get_running_loop())
        wrapper.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        wrapper.write(b"{}")
        assert recording.written == []  # nothing yet: the turn is not over
        await asyncio.sleep(0)
        wrapper.write(b"next")
        await asyncio.sleep(0)
        return recording

    recording = asyncio.run(scenario())
    assert recording.written == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"next"]


def test_close_sends_what_is_pending_first_and_nothing_goes_to_a_closing_transport() -> None:
    async def scenario() -> RecordingTransport:
        recording = RecordingTransport()
        wrapper = coalescing(recording, asyncio.get_running_loop())
        wrapper.write(b"last words")
        wrapper.close()
        wrapper.write(b"too late")
        await asyncio.sleep(0)
        return recording

    recording = asyncio.run(scenario())
    assert recording.closed_with == [b"last words"]
    assert recording.written == [b"last words"]


def test_everything_else_is_the_real_transport() -> None:
    async def scenario() -> Any:
        return coalescing(RecordingTransport(), asyncio.get_running_loop()).get_extra_info("peername")

    assert asyncio.run(scenario()) == ("127.0.0.1", 1234)


def tls_records(data: bytes) -> list[int]:
    """Content types of the complete TLS records in ``data``."""
    types, offset = [], 0
    while offset + 5 <= len(data):
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if offset + 5 + length > len(data):
            break
        types.append(data[offset])
        offset += 5 + length
    return types


class RawTLSClient:
    """A TLS client over memory BIOs, so the bytes on the wire can be inspected."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump()
        self._flush()

    def __enter__(self) -> RawTLSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def _pump(self) -> bytes:
        self._flush()
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.incoming.write(data)
        return data

    def exchange(self, request: bytes, responses: int = 1) -> tuple[bytes, bytes]:
        """Send ``request``; (decrypted answer holding ``responses`` responses, raw bytes received)."""
        self.tls.write(request)
        plain, raw = b"", b""
        while plain.count(b"HTTP/1.1 ") < responses or not _complete(plain, responses):
            raw += self._pump()
            while True:
                try:
                    plain += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
        return plain, raw


def _complete(plain: bytes, responses: int) -> bool:
    rest = plain
    for _ in range(responses):
        head, separator, rest = rest.partition(b"\r\n\r\n")
        if not separator:
            return False
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
        )
        if len(rest) < length:
            return False
        rest = rest[length:]
    return True


@pytest.fixture
def running(kube: kubeapi.KubeAPI, tmp_path: pathlib.Path) -> Any:
    harness.write_keyset(tmp_path / "keys", "aws", "ES256")
    runtime = harness.runtime_config(harness.endpoint(algorithm="ES256"))
    app = harness.make_app(runtime, kube, tmp_path / "keys")
    tls = harness.make_tls(tmp_path)
    with harness.RunningServer(app, tls) as served:
        yield served, tls
    app.executor.shutdown(wait=True)


def test_a_response_is_one_tls_record(running: Any) -> None:
    served, tls = running
    request = b"GET /aws/certs HTTP/1.1\r\nhost: localhost\r\n\r\n"
    with RawTLSClient(served.port, tls.client_context()) as client:
        client.exchange(request)  # the first answer may share the read with session tickets
        plain, raw = client.exchange(request)
    assert plain.startswith(b"HTTP/1.1 200 ") and b'"keys"' in plain
    assert tls_records(raw) == [23]  # one application-data record: status line, headers and body


def test_pipelined_requests_are_answered_in_order(running: Any) -> None:
    served, tls = running
    pipelined = b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\nGET /nowhere HTTP/1.1\r\nhost: a\r\n\r\n"
    with RawTLSClient(served.port, tls.client_context()) as client:
        plain, _ = client.exchange(pipelined, responses=2)
    first, second = plain.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b'{"status":"ok"}')
    assert second.startswith(b"404 ") and b'"error":"not_found"' in second


def test_the_server_uses_the_coalescing_protocol(running: Any) -> None:
    served, _ = running
    assert served.server.config.http is transport.HTTPProtocol
