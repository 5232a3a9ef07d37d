"""Connections that never finish a request, or never finish their TLS handshake, are closed; a
connection past the limit is refused with a JSON answer."""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
import threading
import time

from kube_sts.runtime import server
from kube_sts.runtime.http import limits
from kube_sts.runtime.kube import api as kubeapi
from tests.adversarial import attacks
from tests.runtime import harness


def test_stalled_connections_are_closed(tmp_path: pathlib.Path) -> None:
    """The real process: half a request line after the handshake gets 408 ``request_timeout``
    and a TCP connection that never starts its handshake is closed (the server used to keep
    both for ever), within the default timeouts (well under the 75 s keep-alive)."""
    bound = max(limits.LIMITS.request_timeout, limits.LIMITS.handshake_timeout) + 20
    with attacks.runtime_process(tmp_path) as runtime:
        context = runtime.client_context()
        slow = attacks.stalled_connections(context, runtime.port, 20)
        raw = attacks.stalled_connections(None, runtime.port, 5)
        started = time.monotonic()
        try:
            assert len(slow) == 20 and attacks.still_open(slow + raw) == 25
            assert attacks.get(context, runtime.port, "/healthz")[0] == 200
            for sock in slow:
                status, body = attacks.status_and_body(attacks.read_answer(sock, bound))
                assert (status, json.loads(body)["error"]) == (408, "request_timeout")
            for sock in raw:
                sock.settimeout(bound)
                assert sock.recv(1) == b""
            print(f"25 stalled connections closed after {time.monotonic() - started:.1f}s")
        finally:
            for sock in slow + raw:
                sock.close()


def test_a_connection_past_the_limit_is_refused(tmp_path: pathlib.Path) -> None:
    tls = harness.make_tls(tmp_path / "tls")
    runtime = harness.runtime_config(harness.endpoint())
    harness.write_keyset(tmp_path / "keys", "aws", "RS256")
    app = harness.make_app(runtime, kubeapi.KubeAPI.for_host("http://127.0.0.1:9", timeout=0.5), tmp_path / "keys")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    uv = server.uvicorn_server(
        app,
        host="127.0.0.1",
        port=port,
        ssl_context=tls.server_context(),
        log_level="warning",
        bounds=limits.Limits(max_connections=3),
    )
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    context = tls.client_context()
    held: list[ssl.SSLSocket] = []
    try:
        while not uv.started:
            time.sleep(0.01)
        held = [attacks.tls_connect(context, port) for _ in range(3)]
        with attacks.tls_connect(context, port) as extra:
            status, body = attacks.status_and_body(attacks.read_answer(extra, 10))
        assert (status, json.loads(body)["error"]) == (503, "too_many_connections")
        held.pop().close()
        for _ in range(100):  # the server sees the close on a later loop turn
            if len(uv.server_state.connections) < 3:
                break
            time.sleep(0.05)
        with attacks.tls_connect(context, port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert attacks.status_and_body(attacks.read_answer(sock, 10))[0] == 200
    finally:
        for sock in held:
            sock.close()
        uv.should_exit = True
        thread.join(10)
        listener.close()
