"""Connections that never finish a request, or never finish (or start) their TLS handshake, are
closed; a full server makes room for a new connection by closing the stalled ones; the memory a
flood of connections took returns when they close."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator

from harness import attacks
from harness import runtime as harness
from kube_sts.runtime import server
from kube_sts.runtime.http import limits, transport
from kube_sts.runtime.http import messages as web
from kube_sts.runtime.kube import api as kubeapi


def test_stalled_connections_are_closed(tmp_path: pathlib.Path) -> None:
    """The real process: a TCP connection that never sends a byte, one that stops halfway
    through its ClientHello, one that sends its ClientHello and never answers the server's
    flight (all closed after the handshake timeout), and half a request line after the handshake
    (408 ``request_timeout``). The server used to keep them for ever; the bound is well under
    the 75 s keep-alive."""
    bound = max(limits.LIMITS.request_timeout, limits.LIMITS.handshake_timeout) + 20
    with attacks.runtime_process(tmp_path) as runtime:
        context = runtime.client_context()
        slow = attacks.stalled_connections(context, runtime.port, 20)
        stalled = {
            "sends nothing": attacks.stalled_connections(None, runtime.port, 5),
            "half a ClientHello": attacks.stalled_handshakes(context, runtime.port, 5, whole=False),
            "a ClientHello, no answer": attacks.stalled_handshakes(context, runtime.port, 5, whole=True),
        }
        every = slow + [sock for group in stalled.values() for sock in group]
        started = time.monotonic()
        try:
            assert len(slow) == 20 and attacks.still_open(slow) == 20
            assert attacks.get(context, runtime.port, "/healthz")[0] == 200
            for sock in slow:
                status, body = attacks.status_and_body(attacks.read_answer(sock, bound))
                assert (status, json.loads(body)["error"]) == (408, "request_timeout")
            for case, group in stalled.items():
                closed = sum(attacks.closed_within(sock, bound) for sock in group)
                assert closed == len(group), f"{case}: {len(group) - closed} of {len(group)} still open"
            print(f"{len(every)} stalled connections closed after {time.monotonic() - started:.1f}s")
        finally:
            for sock in every:
                sock.close()


@contextlib.contextmanager
def small_server(
    tmp_path: pathlib.Path, bounds: limits.Limits
) -> Iterator[tuple[int, ssl.SSLContext, threading.Event]]:
    """The app on real uvicorn within ``bounds``, with a ``GET /wait`` route that answers once the
    yielded event is set (a request the server is busy answering)."""
    tls = harness.make_tls(tmp_path / "tls")
    runtime = harness.runtime_config(harness.endpoint())
    harness.write_keyset(tmp_path / "keys", "aws", "RS256")
    app = harness.make_app(runtime, kubeapi.KubeAPI.for_host("http://127.0.0.1:9", timeout=0.5), tmp_path / "keys")
    release = threading.Event()

    async def wait(_request: web.Request) -> web.Response:
        while not release.is_set():
            await asyncio.sleep(0.01)
        return web.json_response(200, {"waited": True})

    app.add_route("GET", "/wait", wait)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    uv = server.uvicorn_server(
        app, host="127.0.0.1", port=port, ssl_context=tls.server_context(), log_level="warning", bounds=bounds
    )
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        while not uv.started:
            time.sleep(0.01)
        yield port, tls.client_context(), release
    finally:
        release.set()
        uv.should_exit = True
        thread.join(10)
        listener.close()


def test_a_full_server_closes_stalled_connections_to_serve_new_ones(tmp_path: pathlib.Path) -> None:
    """While stalled connections fill the cap, ``/healthz`` (the kubelet's liveness probe) and
    any other new connection are served: the least recently active stalled connection is closed
    with 503 ``too_many_connections``, an idle keep-alive one silently (it used to be the new
    connection that got the 503, so a flood failed the probe and got the replica restarted)."""
    with small_server(tmp_path, limits.Limits(max_connections=3)) as (port, context, _release):
        stalled = attacks.stalled_connections(context, port, 2, workers=1)
        idle = attacks.tls_connect(context, port)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert attacks.status_and_body(attacks.read_answer(idle, 10))[0] == 200  # kept alive
        try:
            for index in range(2):  # the cap is full: two stalled connections and the idle one
                assert attacks.get(context, port, "/healthz")[0] == 200
                status, body = attacks.status_and_body(attacks.read_answer(stalled[index], 10))
                assert (status, json.loads(body)["error"]) == (503, "too_many_connections")
                stalled += attacks.stalled_connections(context, port, 1, workers=1)
            # The idle connection is now the least recently active; a new one closes it.
            assert attacks.get(context, port, "/healthz")[0] == 200
            assert attacks.closed_within(idle, 10)
            assert attacks.still_open(stalled[2:]) == 2
        finally:
            for sock in [*stalled, idle]:
                sock.close()


def test_a_connection_past_the_limit_is_refused_when_every_connection_is_answered(tmp_path: pathlib.Path) -> None:
    with small_server(tmp_path, limits.Limits(max_connections=3)) as (port, context, release):
        busy = [attacks.tls_connect(context, port) for _ in range(3)]
        try:
            for sock in busy:
                sock.sendall(b"GET /wait HTTP/1.1\r\nHost: localhost\r\n\r\n")
            time.sleep(0.5)  # the server reads the three requests
            with attacks.tls_connect(context, port) as extra:
                status, body = attacks.status_and_body(attacks.read_answer(extra, 10))
            assert (status, json.loads(body)["error"]) == (503, "too_many_connections")
            release.set()
            for sock in busy:
                assert attacks.status_and_body(attacks.read_answer(sock, 10))[0] == 200
            assert attacks.get(context, port, "/healthz")[0] == 200
        finally:
            for sock in busy:
                sock.close()


def test_memory_returns_after_connection_floods(tmp_path: pathlib.Path) -> None:
    """The real process: rounds of 800 connections that stall after their handshake (and 200 that
    send nothing), held past one of the server's memory checks, then closed.
    After each round RSS comes back to within half the flood's growth of the idle figure (it used
    to keep almost all of it, and grow with every round: 70 -> 122 -> 148 -> 175 MB)."""
    rounds, count = 3, 800
    with attacks.runtime_process(tmp_path) as runtime:
        pid = attacks.pid(runtime)
        context = runtime.client_context()
        before = attacks.rss_mb(pid)
        figures = []
        for _ in range(rounds):
            held = attacks.stalled_connections(context, runtime.port, count)
            silent = attacks.stalled_connections(None, runtime.port, 200)
            peak = attacks.rss_mb(pid)
            time.sleep(transport.MemoryReturn().interval + 1)  # the server checks while they are held
            peak = max(peak, attacks.rss_mb(pid))
            for sock in silent:
                sock.close()
            for sock in held:
                sock.close()
            bound = before + (peak - before) / 2
            deadline = time.monotonic() + 30  # the server returns memory every few seconds
            after = attacks.rss_mb(pid)
            while after > bound and time.monotonic() < deadline:
                time.sleep(0.5)
                after = attacks.rss_mb(pid)
            figures.append((len(held), peak, after))
            print(f"{len(held)} connections: RSS {before:.1f} MB before, {peak:.1f} peak, {after:.1f} after")
        for held_count, peak, after in figures:
            assert held_count == count
            assert after <= before + (peak - before) / 2, figures


def test_a_closed_connection_whose_client_stops_reading_is_released(tmp_path: pathlib.Path) -> None:
    """A connection the server closed (here: 408) waits ``shutdown_timeout`` for the client's TLS
    close_notify, then is dropped; the event loop's default kept it, and its memory, for 30 s."""
    bounds = limits.Limits(request_timeout=1.0, shutdown_timeout=1.0)
    with small_server(tmp_path, bounds) as (port, context, _release):
        [stalled] = attacks.stalled_connections(context, port, 1, workers=1)
        try:
            deadline = time.monotonic() + 15  # well under the loop's 30 s
            while time.monotonic() < deadline and not attacks.readable(stalled):
                time.sleep(0.1)
            assert attacks.readable(stalled)  # the 408 and the server's close_notify
            released = time.monotonic()
            # Never answering the close_notify, the client learns the server dropped the
            # connection when the TCP stream ends.
            raw = socket.socket(fileno=os.dup(stalled.fileno()))
            try:
                assert attacks.closed_within(raw, deadline - time.monotonic())
            finally:
                raw.close()
            print(f"released {time.monotonic() - released:.1f}s after the server closed it")
        finally:
            stalled.close()
