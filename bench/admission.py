"""Admission reviews/s, p50/p99 on one server core: with the live ServiceAccount read and without it.

At 2 and 16 TLS keep-alive connections; live is production's path, the floor reads no ServiceAccount.

The runtime (uvicorn, httptools, uvloop, TLS) serves ``POST /mutate/aws`` in its own process
pinned to CPU 0; the load generator (non-blocking keep-alive connections, one review in flight
each) runs pinned to CPU 1. Each review is the seed's example Pod, which gets the full injection.

Two such runtimes run side by side on CPU 0 and are measured in alternating rounds:

- live: wired as ``kube_sts/runtime/server.py`` wires it (``app.account_annotations``), so every
  labelled review (and every review in ServiceAccount-selection mode) waits for
  ``GET /api/v1/namespaces/default/serviceaccounts/default`` as ``PartialObjectMetadata``, through
  the production client (kubernetes ``ApiClient`` on urllib3, the guard's thread pool), over TLS
  with a bearer token, as in a cluster;
- floor: the same runtime without the accounts reader (no read at all).

The API server answering the read is a minimal one in its own process (uvloop, TLS keep-alive,
one ``PartialObjectMetadata`` answer computed once by the API-server double of harness/apiserver.py
for the stored ServiceAccount, with kube-apiserver's headers), pinned to CPU 2 when the machine has
one, else to CPU 1 beside the load generator. Its CPU time per read and how busy the load
generator's CPU was are printed, so a client-bound figure shows as such.

Run from the repository root:

    PYTHONPATH=. /work/venv/bin/python bench/admission.py [--seconds 5] [--rounds 3]

Shared machines are noisy: each figure is the median of ``--rounds`` measurements, and the
per-round rates are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import logging
import multiprocessing
import os
import pathlib
import selectors
import socket
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any, cast

import uvloop

from bench import token_exchange
from harness import apiserver
from harness import runtime as harness
from harness.reviews import ROLE, review_body, seed_pod
from kube_sts.runtime import config, server
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.webhook import admission as webhook

TARGET_RATE = 7000.0
API_CPU = 2 if token_exchange.CPUS > 2 else token_exchange.CLIENT_CPU
API_TOKEN = "bench-serviceaccount-token"
COUNT_PATH = "/bench/reads"
"""The minimal API server's own path: how many ServiceAccount reads it answered."""
ACCOUNT = ("default", "default")
"""The seed Pod's ServiceAccount (no ``serviceAccountName``: ``default`` in ``default``)."""


# -- the API server the live runtime reads from --------------------------------------------------


class _APIProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive; answers from ``answers`` (computed once by the double), else 404."""

    def __init__(self, answers: dict[tuple[str, str, str], tuple[int, bytes]], counter: list[int]) -> None:
        self.answers = answers
        self.counter = counter
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's SSL transport is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.respond(method, target, headers)

    def respond(self, method: str, target: str, headers: dict[str, str]) -> None:
        assert self.transport is not None
        if target == COUNT_PATH:
            code, data = 200, json.dumps({"reads": self.counter[0]}).encode()
        elif headers.get("authorization") != f"Bearer {API_TOKEN}":
            code, data = 401, json.dumps(apiserver.status_object(401, "Unauthorized", "Unauthorized")).encode()
        else:
            found = self.answers.get((method, target, headers.get("accept", "")))
            if found is None:
                status = apiserver.status_object(404, "NotFound", "the bench API server serves this read only")
                code, data = 404, json.dumps(status).encode()
            else:
                code, data = found
                self.counter[0] += 1
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}[code]
        self.transport.write(
            (
                f"HTTP/1.1 {code} {reason}\r\nAudit-Id: {uuid.uuid4()}\r\nCache-Control: no-cache, private\r\n"
                f"Content-Type: application/json\r\nX-Kubernetes-Pf-Flowschema-Uid: {_FLOW}\r\n"
                f"X-Kubernetes-Pf-Prioritylevel-Uid: {_LEVEL}\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data
        )


_FLOW, _LEVEL = uuid.uuid4(), uuid.uuid4()


def api_answers() -> dict[tuple[str, str, str], tuple[int, bytes]]:
    """The double's answers to the reads the runtime makes: the ServiceAccount as metadata, /version."""
    double = apiserver.APIServer()
    double.add_service_account(*ACCOUNT, annotations={config.EKS_ROLE_ANNOTATION: ROLE})
    accept = kubeapi.PARTIAL_METADATA
    account_path = f"/api/v1/namespaces/{ACCOUNT[0]}/serviceaccounts/{ACCOUNT[1]}"
    answers = {}
    for method, path, wanted in (("GET", account_path, accept), ("GET", "/version", "application/json")):
        code, answer = double.handle(method, path, {"accept": wanted}, b"")
        answers[(method, path, wanted)] = (code, json.dumps(answer).encode())
    return answers


def api_child(workdir: str, port_file: str) -> None:
    token_exchange.pin(API_CPU)
    directory = pathlib.Path(workdir)
    context = harness.TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key").server_context()
    answers, counter = api_answers(), [0]

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(lambda: _APIProtocol(answers, counter), "127.0.0.1", 0, ssl=context)
        pathlib.Path(port_file).write_text(str(listener.sockets[0].getsockname()[1]))
        await listener.serve_forever()

    uvloop.run(serve())


def api_reads(port: int, context: ssl.SSLContext) -> int:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{COUNT_PATH}", context=context, timeout=5) as answer:
        return int(json.load(answer)["reads"])


def wait_for_api(child: Any, port_file: pathlib.Path, context: ssl.SSLContext) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not child.is_alive():
            raise RuntimeError("the API server process exited")
        if port_file.exists() and port_file.read_text():
            port = int(port_file.read_text())
            try:
                api_reads(port, context)
                return port
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError("the API server did not start within 30 s")


# -- the runtime --------------------------------------------------------------------------------


def serve_child(workdir: str, port_file: str, api_url: str | None) -> None:
    """The runtime; with ``api_url``, wired as server.py wires it (the live ServiceAccount read)."""
    token_exchange.pin(token_exchange.SERVER_CPU)
    logging.basicConfig(level=logging.ERROR)
    directory = pathlib.Path(workdir)
    runtime = harness.runtime_config(harness.endpoint())
    if api_url is None:
        kube = kubeapi.KubeAPI.for_host("http://127.0.0.1:9", timeout=1.0)
    else:
        kube = kubeapi.KubeAPI.for_host(api_url, token=API_TOKEN, ca_file=str(directory / "ca.crt"))
    keys = keymanager.KeyManager.from_config(runtime, keys_dir=directory / "keys", fetcher=None)
    app = server.App(runtime, kube=kube, keys=keys)
    app.on_startup.append(keys.refresh)
    ca = (directory / "ca.crt").read_bytes()
    webhook.add_routes(app, runtime, lambda: ca, None if api_url is None else app.account_annotations)
    tls = harness.TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    pathlib.Path(port_file).write_text(str(sock.getsockname()[1]))
    uv = server.uvicorn_server(app, host="127.0.0.1", port=0, ssl_context=tls.server_context(), log_level="warning")
    uv.run(sockets=[sock])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far, from /proc."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def percentile(latencies: list[float], fraction: float) -> float:
    return latencies[max(int(len(latencies) * fraction) - 1, 0)] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements per connection count and runtime; medians are reported"
    )
    args = parser.parse_args(argv)
    modes = ("floor", "live")
    with tempfile.TemporaryDirectory(prefix="kube-sts-bench-") as workdir:
        directory = pathlib.Path(workdir)
        tls = harness.make_tls(directory)
        harness.write_keyset(directory / "keys", "aws", "RS256")
        spawn = multiprocessing.get_context("spawn")
        api = spawn.Process(target=api_child, args=(workdir, str(directory / "api-port")), daemon=True)
        api.start()
        children = []
        try:
            api_port = wait_for_api(api, directory / "api-port", tls.client_context())
            ports: dict[str, int] = {}
            pids: dict[str, int] = {}
            for mode in modes:
                api_url = f"https://127.0.0.1:{api_port}" if mode == "live" else None
                port_file = directory / f"port-{mode}"
                child = spawn.Process(target=serve_child, args=(workdir, str(port_file), api_url), daemon=True)
                child.start()
                children.append(child)
                ports[mode] = token_exchange._wait_for(child, port_file, tls.client_context())
                assert child.pid is not None
                pids[mode] = child.pid
            # the answer is a real injection, and the live runtime reads the ServiceAccount for each review
            sample = review_body(seed_pod())
            assert json.loads(sample)["request"]["object"]["metadata"]["labels"]["tremolo.io/aws-role"]
            for mode in modes:
                before = api_reads(api_port, tls.client_context())
                ok, failed, _ = load(ports[mode], str(tls.ca), 2, 1.0)  # warm-up
                reads = api_reads(api_port, tls.client_context()) - before
                assert failed == 0, f"{mode}: {failed} reviews failed in the warm-up"
                assert reads == (ok if mode == "live" else 0), f"{mode}: {reads} ServiceAccount reads for {ok} reviews"
            # (mode, connections) -> per-round rates, failures, latencies, CPU seconds of the API server
            # and of the load generator, ServiceAccount reads, wall seconds
            results: dict[tuple[str, int], dict[str, Any]] = {
                (mode, connections): {
                    "rates": [],
                    "failed": 0,
                    "latencies": [],
                    "api_cpu": 0.0,
                    "server_cpu": 0.0,
                    "ok": 0,
                    "load_cpu": 0.0,
                    "reads": 0,
                    "wall": 0.0,
                }
                for connections in (2, 16)
                for mode in modes
            }
            for connections in (2, 16):
                for _ in range(args.rounds):
                    for mode in modes:  # alternating, so drift on a shared machine hits both alike
                        entry = results[(mode, connections)]
                        reads_before = api_reads(api_port, tls.client_context())
                        api_before, load_before, started = cpu_seconds(api.pid or 0), time.process_time(), time.time()
                        server_before = cpu_seconds(pids[mode])
                        ok, failed, round_latencies = load(ports[mode], str(tls.ca), connections, args.seconds)
                        entry["wall"] += time.time() - started
                        entry["load_cpu"] += time.process_time() - load_before
                        entry["api_cpu"] += cpu_seconds(api.pid or 0) - api_before
                        entry["server_cpu"] += cpu_seconds(pids[mode]) - server_before
                        entry["ok"] += ok
                        entry["reads"] += api_reads(api_port, tls.client_context()) - reads_before
                        entry["rates"].append(ok / args.seconds)
                        entry["failed"] += failed
                        entry["latencies"].extend(round_latencies)
        finally:
            for child in children:
                child.terminate()
                child.join(10)
            api.terminate()
            api.join(10)
    print(
        f"admission reviews, POST /mutate/aws over TLS keep-alive, server on one core "
        f"(median of {args.rounds} rounds of {args.seconds:g} s, floor and live rounds alternating)"
    )
    titles = {
        "floor": "floor: no ServiceAccount read (webhook.add_routes without accounts)",
        "live": "live: one ServiceAccount GET per review (app.account_annotations, as server.py wires it)",
    }
    medians: dict[tuple[str, int], tuple[float, float, float]] = {}
    for mode in modes:
        print(f"  {titles[mode]}")
        for connections in (2, 16):
            entry = results[(mode, connections)]
            latencies = sorted(entry["latencies"])
            rate, p50, p99 = statistics.median(entry["rates"]), percentile(latencies, 0.5), percentile(latencies, 0.99)
            medians[(mode, connections)] = (rate, p50, p99)
            rounds = ", ".join(f"{r:.0f}" for r in entry["rates"])
            per_review = entry["server_cpu"] / max(entry["ok"], 1) * 1e6
            print(
                f"    {connections:2d} connections: {rate:8.0f} reviews/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
                f"  failed {entry['failed']}  server CPU {per_review:.0f} us/review  (rounds: {rounds})"
            )
    print("  live/floor")
    for connections in (2, 16):
        (live, live50, live99), (floor, floor50, floor99) = (
            medians[("live", connections)],
            medians[("floor", connections)],
        )
        print(
            f"    {connections:2d} connections: rate {live / floor:.2f}x  p50 {live50 / floor50:.2f}x"
            f"  p99 {live99 / floor99:.2f}x  (each read costs the server core about"
            f" {(1 / live - 1 / floor) * 1e6:.0f} us of throughput)"
        )
    where = f"CPU {API_CPU}" + (" beside the load generator" if API_CPU == token_exchange.CLIENT_CPU else "")
    print(f"  API server (minimal, TLS keep-alive, the double's answer; {where})")
    for connections in (2, 16):
        live_entry, floor_entry = results[("live", connections)], results[("floor", connections)]
        per_read = live_entry["api_cpu"] / max(live_entry["reads"], 1) * 1e6
        busy = {
            m: (e["load_cpu"] + e["api_cpu"]) / e["wall"] * 100
            for m, e in (("live", live_entry), ("floor", floor_entry))
        }
        print(
            f"    {connections:2d} connections: {live_entry['reads']} reads, {per_read:.0f} us CPU per read;"
            f" CPU {token_exchange.CLIENT_CPU} busy {busy['live']:.0f}% in live rounds,"
            f" {busy['floor']:.0f}% in floor rounds"
        )
    best = max(medians[("live", connections)][0] for connections in (2, 16))
    verdict = "meets" if best >= TARGET_RATE else "BELOW"
    print(f"  best live median {best:.0f}/s {verdict} the target of {TARGET_RATE:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
