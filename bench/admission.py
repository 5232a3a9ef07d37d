"""Admission reviews per second on one server core, p50/p99 at 2 and 16 TLS keep-alive connections.

The runtime (uvicorn, httptools, uvloop, TLS) serves ``POST /mutate/aws`` in its own process
pinned to CPU 0; the load generator (non-blocking keep-alive connections, one review in flight
each) runs pinned to CPU 1. Each review is the seed's example Pod, which gets the full injection.

Run from the repository root:

    PYTHONPATH=. /work/venv/bin/python bench/admission.py [--seconds 5] [--rounds 3]

Shared machines are noisy: each figure is the median of ``--rounds`` measurements, and the
per-round rates are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import pathlib
import selectors
import socket
import ssl
import statistics
import sys
import tempfile
import time

from bench import token_exchange
from harness import runtime as harness
from harness.reviews import review_body, seed_pod
from kube_sts.runtime import server
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.webhook import admission as webhook

TARGET_RATE = 7000.0


def serve_child(workdir: str, port_file: str) -> None:
    token_exchange.pin(token_exchange.SERVER_CPU)
    logging.basicConfig(level=logging.ERROR)
    directory = pathlib.Path(workdir)
    runtime = harness.runtime_config(harness.endpoint())
    kube = kubeapi.KubeAPI.for_host("http://127.0.0.1:9", timeout=1.0)
    keys = keymanager.KeyManager.from_config(runtime, keys_dir=directory / "keys", fetcher=None)
    app = server.App(runtime, kube=kube, keys=keys)
    app.on_startup.append(keys.refresh)
    ca = (directory / "ca.crt").read_bytes()
    webhook.add_routes(app, runtime, lambda: ca)
    tls = harness.TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    pathlib.Path(port_file).write_text(str(sock.getsockname()[1]))
    uv = server.uvicorn_server(app, host="127.0.0.1", port=0, ssl_context=tls.server_context(), log_level="warning")
    uv.run(sockets=[sock])


def load(port: int, ca: str, connections: int, seconds: float) -> tuple[int, int, list[float]]:
    token_exchange.pin(token_exchange.CLIENT_CPU)
    context = ssl.create_default_context(cafile=ca)
    body = review_body(seed_pod())
    request = (
        f"POST /mutate/aws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    selector = selectors.DefaultSelector()
    pool = [token_exchange.Connection(context, port, request) for _ in range(connections)]
    for connection in pool:
        selector.register(connection.sock, selectors.EVENT_READ, connection)
        connection.send()
    ok = failed = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    in_flight = len(pool)
    while in_flight:
        for selected, _ in selector.select(timeout=5):
            connection = selected.data
            for status in connection.receive():
                now = time.perf_counter()
                latencies.append(now - connection.sent_at)
                ok, failed = (ok + 1, failed) if status == 200 else (ok, failed + 1)
                if now < deadline:
                    connection.send()
                else:
                    in_flight -= 1
    for connection in pool:
        connection.sock.close()
    return ok, failed, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per connection count; medians are reported")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kube-sts-bench-") as workdir:
        directory = pathlib.Path(workdir)
        tls = harness.make_tls(directory)
        harness.write_keyset(directory / "keys", "aws", "RS256")
        port_file = directory / "port"
        child = multiprocessing.get_context("spawn").Process(
            target=serve_child, args=(workdir, str(port_file)), daemon=True
        )
        child.start()
        try:
            port = token_exchange._wait_for(child, port_file, tls.client_context())
            ok, failed, _ = load(port, str(tls.ca), 2, 1.0)  # warm-up
            # the answer is a real injection
            sample = review_body(seed_pod())
            assert json.loads(sample)["request"]["object"]["metadata"]["labels"]["tremolo.io/aws-role"]
            results: dict[int, tuple[list[float], int, list[float]]] = {}
            for connections in (2, 16):
                rates, failures, latencies = [], 0, []
                for _ in range(args.rounds):
                    ok, failed, round_latencies = load(port, str(tls.ca), connections, args.seconds)
                    rates.append(ok / args.seconds)
                    failures += failed
                    latencies.extend(round_latencies)
                latencies.sort()
                results[connections] = (rates, failures, latencies)
        finally:
            child.terminate()
            child.join(10)
    print(
        f"admission reviews, POST /mutate/aws over TLS keep-alive, server on one core "
        f"(median of {args.rounds} rounds of {args.seconds:g} s)"
    )
    best = 0.0
    for connections, (rates, failed, latencies) in results.items():
        rate = statistics.median(rates)
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
        best = max(best, rate)
        rounds = ", ".join(f"{r:.0f}" for r in rates)
        print(
            f"  {connections:2d} connections: {rate:8.0f} reviews/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
            f"  failed {failed}  (rounds: {rounds})"
        )
    verdict = "meets" if best >= TARGET_RATE else "BELOW"
    print(f"  best median {best:.0f}/s {verdict} the target of {TARGET_RATE:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
