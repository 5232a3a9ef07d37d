"""Token exchanges per second through the real HTTP stack, beside raw signatures per second.

The token service runs in its own process pinned to CPU 0: uvicorn (httptools, uvloop) with TLS,
the production ``App`` with a key set on disk, audit lines written to a file. The load generator
runs in this process pinned to CPU 1: non-blocking TLS keep-alive connections, one request in
flight per connection, each caller presenting its own projected-token double whose TokenReview
is answered from the service's cache (the API server double lives in this process too; the
cache's few-second TTL makes it see one review per caller every few seconds). Before the server
starts, the same key's raw ``cryptography`` signing rate is measured on CPU 0.

Run from the repository root:

    PYTHONPATH=. /work/venv/bin/python bench/token_exchange.py [--seconds 5] [--connections 16] [--rounds 3]

Shared machines are noisy: every figure is the median of ``--rounds`` measurements (the raw
signing rate too), and the per-round rates are printed.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import pathlib
import re
import selectors
import socket
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from harness import apiserver
from harness import runtime as harness
from kube_sts.runtime import server
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tokens import audit

SERVER_CPU = 0
CLIENT_CPU = 1
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


CPUS = os.cpu_count() or 1


def pin(cpu: int) -> bool:
    """Run this process on ``cpu`` only, when the machine has it.

    Asks for the CPU directly rather than checking this process's current affinity: a process
    started by a pinned parent inherits the parent's single CPU and must still be able to move.
    """
    if CPUS < 2 or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    return True


def raw_signing_rate(key: keyset.Key, seconds: float) -> float:
    """Signatures per second of ``key`` over a token-sized message, with ``cryptography`` directly."""
    message = b"x" * 620
    private = key.private_key
    count = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    if isinstance(private, rsa.RSAPrivateKey):
        while time.perf_counter() < deadline:
            for _ in range(20):
                private.sign(message, padding.PKCS1v15(), hashes.SHA256())
            count += 20
    else:
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        while time.perf_counter() < deadline:
            for _ in range(100):
                private.sign(message, ec.ECDSA(hashes.SHA256()))
            count += 100
    return count / (time.perf_counter() - started)


def _echo(port: int) -> None:
    """Answer every message on one loopback connection with 100 bytes (CPU 1)."""
    pin(CLIENT_CPU)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while sock.recv(65536):
            sock.sendall(b"y" * 100)


def loopback_round_trip(count: int = 5000) -> tuple[float, float]:
    """(round trip, send) in microseconds for a token-sized message between CPU 0 and CPU 1.

    The cost of one request/response exchange between the two processes, below any HTTP, TLS or
    Python server: on virtual machines a wake-up across CPUs can dominate it.
    """
    pin(SERVER_CPU)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = multiprocessing.get_context("spawn").Process(target=_echo, args=(listener.getsockname()[1],))
        peer.start()
        connection, _ = listener.accept()
    message = b"x" * 700
    sending = 0.0
    with connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        for _ in range(count):
            before = time.perf_counter()
            connection.sendall(message)
            sending += time.perf_counter() - before
            connection.recv(65536)
        elapsed = time.perf_counter() - started
    peer.join(10)
    pin(CLIENT_CPU)
    return elapsed / count * 1e6, sending / count * 1e6


def serve_child(workdir: str, api_url: str, algorithm: str, port_file: str) -> None:
    """The token service process (CPU 0)."""
    pin(SERVER_CPU)
    logging.basicConfig(level=logging.ERROR)
    directory = pathlib.Path(workdir)
    trail = audit.AuditTrail(open(directory / "audit.log", "w"))  # noqa: SIM115 (lives as long as the process)
    runtime = harness.runtime_config(harness.endpoint(algorithm=algorithm, rules=["(namespace=bench)"]))
    kube = kubeapi.KubeAPI.for_host(api_url, timeout=3.0)
    keys = keymanager.KeyManager.from_config(runtime, keys_dir=directory / "keys", fetcher=None)
    app = server.App(runtime, kube=kube, keys=keys, audit=trail)
    app.on_startup.append(keys.refresh)
    tls = harness.TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    pathlib.Path(port_file).write_text(str(sock.getsockname()[1]))
    uv = server.uvicorn_server(app, host="127.0.0.1", port=0, ssl_context=tls.server_context(), log_level="warning")
    uv.run(sockets=[sock])


class Connection:
    def __init__(self, context: ssl.SSLContext, port: int, request: bytes) -> None:
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.sock.setblocking(False)
        self.request = request
        self.buffer = b""
        self.sent_at = 0.0

    def send(self) -> None:
        self.sent_at = time.perf_counter()
        view = memoryview(self.request)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except ssl.SSLWantWriteError:
                continue

    def receive(self) -> list[int]:
        """Statuses of the responses completed by the data available now."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        statuses = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            match = _LENGTH.search(self.buffer, 0, end)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                break
            statuses.append(int(self.buffer[9:12]))
            self.buffer = self.buffer[total:]
        return statuses


def load(
    port: int, context: ssl.SSLContext, tokens: list[str], seconds: float, target: str = "POST /aws/token"
) -> tuple[int, int, list[float]]:
    """Drive ``len(tokens)`` keep-alive connections for ``seconds``: (ok, failed, latencies)."""
    selector = selectors.DefaultSelector()
    connections = []
    for token in tokens:
        request = (
            f"{target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        connection = Connection(context, port, request)
        selector.register(connection.sock, selectors.EVENT_READ, connection)
        connections.append(connection)
    ok = failed = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    for connection in connections:
        connection.send()
    in_flight = len(connections)
    while in_flight:
        for selected, _ in selector.select(timeout=5):
            connection = selected.data
            for status in connection.receive():
                now = time.perf_counter()
                latencies.append(now - connection.sent_at)
                if status == 200:
                    ok += 1
                else:
                    failed += 1
                if now < deadline:
                    connection.send()
                else:
                    in_flight -= 1
    for connection in connections:
        connection.sock.close()
    selector.close()
    return ok, failed, latencies


def _load_worker(job: tuple[int, str, list[str], float, str]) -> tuple[int, int, list[float]]:
    port, ca, tokens, seconds, target = job
    pin(CLIENT_CPU)
    return load(port, ssl.create_default_context(cafile=ca), tokens, seconds, target)


def drive(
    port: int, ca: pathlib.Path, tokens: list[str], seconds: float, clients: int, target: str = "POST /aws/token"
) -> tuple[int, int, list[float]]:
    """``load`` split over ``clients`` processes on the load generator's CPU."""
    jobs = [(port, str(ca), tokens[index::clients], seconds, target) for index in range(clients)]
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        results = pool.map(_load_worker, jobs)
    return (
        sum(r[0] for r in results),
        sum(r[1] for r in results),
        [latency for r in results for latency in r[2]],
    )


def run(algorithm: str, seconds: float, connections: int, clients: int, rounds: int) -> dict[str, Any]:
    """``rounds`` measurements of one algorithm against one server; medians and per-round rates."""
    with tempfile.TemporaryDirectory(prefix="kube-sts-bench-") as workdir:
        directory = pathlib.Path(workdir)
        tls = harness.make_tls(directory)
        keys = harness.write_keyset(directory / "keys", "aws", algorithm)
        signing = keys.signing_key(int(time.time()))
        pin(SERVER_CPU)
        raw_rates = [raw_signing_rate(signing, 1.0) for _ in range(rounds)]
        pin(CLIENT_CPU)
        with apiserver.APIServer() as api:
            tokens = []
            for index in range(connections):
                pod = api.add_pod("bench", f"caller-{index}")
                tokens.append(api.issue_token("bench", "app", pod=pod, audiences=[harness.STS_AUDIENCE]))
            port_file = directory / "port"
            child = multiprocessing.get_context("spawn").Process(
                target=serve_child, args=(workdir, api.url, algorithm, str(port_file)), daemon=True
            )
            child.start()
            try:
                context = tls.client_context()
                port = _wait_for(child, port_file, context)
                load(port, context, tokens, 1.0)  # warm-up: fills the review cache, warms the key
                reviews_before = len(api.requests_to("/apis/authentication.k8s.io"))
                rates, floors, failed, latencies = [], [], 0, []
                for _ in range(rounds):
                    ok, bad, round_latencies = drive(port, tls.ca, tokens, seconds, clients)
                    rates.append(ok / seconds)
                    failed += bad
                    latencies.extend(round_latencies)
                    floor_ok, _, _ = drive(port, tls.ca, tokens, min(seconds, 2.0), clients, "GET /healthz")
                    floors.append(floor_ok / min(seconds, 2.0))
                reviews = len(api.requests_to("/apis/authentication.k8s.io")) - reviews_before
            finally:
                child.terminate()
                child.join(10)
    latencies.sort()
    return {
        "algorithm": algorithm,
        "raw": statistics.median(raw_rates),
        "rate": statistics.median(rates),
        "rates": rates,
        "failed": failed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "reviews": reviews,
        "floor": statistics.median(floors),
    }


def _wait_for(child: Any, port_file: pathlib.Path, context: ssl.SSLContext) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not child.is_alive():
            raise RuntimeError("the token service process exited")
        if port_file.exists() and port_file.read_text():
            port = int(port_file.read_text())
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2):
                    return port
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError("the token service did not start within 30 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--clients", type=int, default=1, help="load generator processes (all on one CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per algorithm; medians are reported")
    args = parser.parse_args(argv)
    pinned = CPUS >= 2 and {SERVER_CPU, CLIENT_CPU} <= set(range(CPUS))
    print(
        f"server pinned to CPU {SERVER_CPU}, load generator to CPU {CLIENT_CPU}"
        if pinned
        else "fewer than 2 CPUs available: server and load generator share the CPU (figures are pessimistic)"
    )
    print(
        f"{args.connections} TLS keep-alive connections from {args.clients} "
        f"load process{'es' if args.clients > 1 else ''}, "
        f"{args.rounds} rounds of {args.seconds:g} s per algorithm (medians below), reviews from the cache"
    )
    round_trip, send = loopback_round_trip()
    results = [
        run(algorithm, args.seconds, args.connections, args.clients, args.rounds) for algorithm in ("RS256", "ES256")
    ]
    print()
    columns = ("alg", "raw signs/s", "exchanges/s", "ratio", "p50 ms", "p99 ms", "failed", "reviews", "/healthz/s")
    header = f"{columns[0]:<6}" + "".join(f"{c:>13}" for c in columns[1:])
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['algorithm']:<6}{r['raw']:>13,.0f}{r['rate']:>13,.0f}{r['rate'] / r['raw']:>13.0%}"
            f"{r['p50']:>13.2f}{r['p99']:>13.2f}{r['failed']:>13}{r['reviews']:>13}{r['floor']:>13,.0f}"
        )
    rs, es = results
    rs_ratio = rs["rate"] / rs["raw"]
    print()
    for r in results:
        print(f"{r['algorithm']} exchanges/s per round: " + ", ".join(f"{rate:,.0f}" for rate in r["rates"]))
    print("raw: cryptography signatures/s of the same key on the server's CPU, before the server started")
    print("reviews: TokenReviews the API server saw during the measurement (the rest came from the cache)")
    print("/healthz/s: the same connections and headers on GET /healthz, the HTTP + TLS floor of this machine")
    print(f"ES256 exchanges/s as a share of the /healthz floor: {es['rate'] / es['floor']:.0%}")
    print(
        f"loopback between the two CPUs, no HTTP or TLS: {round_trip:.0f} us per round trip, "
        f"{send:.0f} us per 700-byte send(2)"
    )
    print(f"RS256 target >= 50% of raw signing: {rs_ratio:.0%} ({'met' if rs_ratio >= 0.5 else 'NOT met'})")
    print(f"ES256 target >= 5,000 exchanges/s: {es['rate']:,.0f} ({'met' if es['rate'] >= 5000 else 'NOT met'})")
    return 0 if rs["failed"] == es["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
