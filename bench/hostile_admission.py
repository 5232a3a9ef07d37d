"""What the worst admission reviews a client can send cost the runtime: loop time, memory, answer size.

The runtime (uvicorn, TLS) serves ``POST /mutate/aws`` in its own process pinned to CPU 0, a fresh
one per case. The client, pinned to CPU 1, sends each hostile review ``--repeat`` times while a
second connection probes ``GET /healthz`` back to back: the longest probe is the event loop's
stall (what every other connection waits), the process's peak RSS (``VmHWM``) less its RSS before
is the memory a review costs. Every body is at most ``webhook.MAX_BODY`` (the route's limit).
A last run floods the worst case from ``--flood-connections`` connections and reports the probes.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python bench/hostile_admission.py [--repeat 3] [--flood-seconds 5]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import pathlib
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import admission, token_exchange
from harness import runtime as harness
from harness.reviews import review_body, seed_pod
from kube_sts.runtime.webhook import admission as webhook
from kube_sts.runtime.webhook import injection


def _fill(make: Callable[[list[Any]], dict[str, Any]], item: Any) -> bytes:
    """The review ``make(filler)`` with as many ``item`` in the filler as fit in ``MAX_BODY``."""
    empty = len(review_body(make([])))
    each = len(json.dumps(item)) + 2  # json.dumps separates items with ", "
    body = review_body(make([item] * ((webhook.MAX_BODY - empty) // each)))
    assert len(body) <= webhook.MAX_BODY, len(body)
    return body


def _pod(**spec: Any) -> dict[str, Any]:
    pod = seed_pod()
    pod["spec"].update(spec)
    return pod


def _largest(filler: list[Any]) -> dict[str, Any]:
    """Every capped list at its cap and the longest role: the largest answer kube-sts sends."""
    pod = _pod(
        containers=[{"name": f"c{i}", "image": "busybox"} for i in range(injection.MAX_CONTAINERS)],
        initContainers=[{"name": f"i{i}", "image": "busybox"} for i in range(injection.MAX_CONTAINERS)],
    )
    pod["metadata"]["annotations"]["tremolo.io/aws-role"] = "r" * injection.MAX_VALUE
    pod["spec"]["overhead"] = {"filler": filler}  # decoded, never read by the patch
    return pod


def cases() -> dict[str, bytes]:
    return {
        "issue's review: 100k {} containers (300 KB)": review_body(_pod(containers=[{}] * 100_000)),
        "3 MiB of {} containers (refused at the cap)": _fill(lambda f: _pod(containers=f), {}),
        "3 MiB of [[]] in a field the patch ignores": _fill(lambda f: _pod(overhead={"filler": f}), [[]]),
        '3 MiB of {"":{}} in a field the patch ignores': _fill(lambda f: _pod(overhead={"filler": f}), {"": {}}),
        "largest injectable Pod (64+64 containers, 2 KiB role)": review_body(_largest([])),
        "largest injectable Pod padded to 3 MiB with [[]]": _fill(_largest, [[]]),
    }


def _memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    fields = dict(
        line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class Prober(threading.Thread):
    """``GET /healthz`` back to back on one keep-alive connection; records each latency."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                self.connection.request("GET", "/healthz")
                answer = self.connection.getresponse()
                answer.read()
                ok = answer.status == 200
            except OSError:
                ok = False
                self.connection.close()
            self.latencies.append(time.perf_counter() - started)
            self.failures += not ok
            time.sleep(0.002)

    def finish(self) -> tuple[float, float, int, int]:
        """p50 and max latency in ms, probes, failures."""
        self.stop.set()
        self.join()
        self.connection.close()
        return statistics.median(self.latencies) * 1000, max(self.latencies) * 1000, len(self.latencies), self.failures


def post(connection: http.client.HTTPSConnection, body: bytes) -> tuple[int, bytes]:
    connection.request("POST", "/mutate/aws", body, {"Content-Type": "application/json"})
    answer = connection.getresponse()
    return answer.status, answer.read()


def _verdict(status: int, answer: bytes) -> str:
    if status != 200:
        return f"HTTP {status}"
    response = json.loads(answer)["response"]
    if response["allowed"]:
        return f"allowed, {len(json.loads(base64.b64decode(response.get('patch', 'W10='))))} ops"
    return f"refused {response['status']['code']}"


class Server:
    def __init__(self, workdir: pathlib.Path, tls: harness.TLSFiles) -> None:
        self.port_file = workdir / "port"
        self.port_file.unlink(missing_ok=True)
        self.child = multiprocessing.get_context("spawn").Process(
            target=admission.serve_child, args=(str(workdir), str(self.port_file)), daemon=True
        )
        self.child.start()
        self.context = tls.client_context()
        self.port = token_exchange._wait_for(self.child, self.port_file, self.context)
        assert self.child.pid is not None
        self.pid = self.child.pid

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=60)

    def close(self) -> None:
        self.child.terminate()
        self.child.join(10)


def measure(server: Server, body: bytes, repeat: int) -> dict[str, Any]:
    connection = server.connect()
    post(connection, review_body(seed_pod()))  # warm: TLS, imports, caches
    time.sleep(0.3)
    rss_before, _ = _memory(server.pid)
    prober = Prober(server.port, server.context)
    prober.start()
    time.sleep(0.3)
    seconds, sizes, verdicts = [], [], set()
    for _ in range(repeat):
        started = time.perf_counter()
        status, answer = post(connection, body)
        seconds.append(time.perf_counter() - started)
        sizes.append(len(answer))
        verdicts.add(_verdict(status, answer))
        time.sleep(0.3)
    p50, stall, _, failures = prober.finish()
    rss_after, peak = _memory(server.pid)
    connection.close()
    return {
        "review_ms": max(seconds) * 1000,
        "stall_ms": stall,
        "probe_p50_ms": p50,
        "probe_failures": failures,
        "peak_mib": peak - rss_before,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "answer": max(sizes),
        "verdict": ", ".join(sorted(verdicts)),
    }


def flood(server: Server, body: bytes, connections: int, seconds: float) -> dict[str, Any]:
    rss_before, _ = _memory(server.pid)
    prober = Prober(server.port, server.context)
    prober.start()
    done = [0] * connections
    deadline = time.perf_counter() + seconds

    def sender(index: int) -> None:
        connection = server.connect()
        while time.perf_counter() < deadline:
            post(connection, body)
            done[index] += 1
        connection.close()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    p50, worst, probes, failures = prober.finish()
    rss_after, peak = _memory(server.pid)
    return {
        "reviews": sum(done),
        "probes": probes,
        "failures": failures,
        "p50": p50,
        "max": worst,
        "peak_mib": peak - rss_before,
        "rss_after": rss_after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="reviews per case; the worst is reported")
    parser.add_argument("--flood-seconds", type=float, default=5.0)
    parser.add_argument("--flood-connections", type=int, default=2)
    parser.add_argument("--only", type=int, nargs="*", help="case numbers to run (default: all, then the flood)")
    args = parser.parse_args(argv)
    token_exchange.pin(token_exchange.CLIENT_CPU)
    bodies = cases()
    chosen = args.only if args.only is not None else range(len(bodies))
    with tempfile.TemporaryDirectory(prefix="kube-sts-bench-") as workdir:
        directory = pathlib.Path(workdir)
        tls = harness.make_tls(directory)
        harness.write_keyset(directory / "keys", "aws", "RS256")
        print("hostile admission reviews, POST /mutate/aws over TLS, one fresh server process per case")
        print(f"  (body limit {webhook.MAX_BODY} bytes, answer limit {webhook.MAX_ANSWER} bytes)")
        worst_stall = worst_memory = 0.0
        for number, (name, body) in enumerate(bodies.items()):
            if number not in chosen:
                continue
            server = Server(directory, tls)
            try:
                result = measure(server, body, args.repeat)
            finally:
                server.close()
            worst_stall = max(worst_stall, result["stall_ms"])
            worst_memory = max(worst_memory, result["peak_mib"])
            print(
                f"  [{number}] {name}: body {len(body) / 2**20:.2f} MiB, {result['verdict']}, "
                f"answer {result['answer']} bytes\n"
                f"      review {result['review_ms']:.0f} ms, loop stall {result['stall_ms']:.0f} ms "
                f"(probe p50 {result['probe_p50_ms']:.1f} ms, {result['probe_failures']} failed), "
                f"peak +{result['peak_mib']:.0f} MiB, RSS {result['rss_before']:.0f} -> {result['rss_after']:.0f} MiB"
            )
        if chosen:
            print(f"  worst case: {worst_stall:.0f} ms of loop time, +{worst_memory:.0f} MiB peak per review")
        if args.only is None:
            body = bodies["largest injectable Pod padded to 3 MiB with [[]]"]
            server = Server(directory, tls)
            try:
                result = flood(server, body, args.flood_connections, args.flood_seconds)
            finally:
                server.close()
            print(
                f"  flood: {args.flood_connections} connections sending the worst case for {args.flood_seconds:g} s: "
                f"{result['reviews']} reviews; /healthz {result['probes'] - result['failures']}/{result['probes']} ok, "
                f"p50 {result['p50']:.1f} ms, max {result['max']:.0f} ms; peak +{result['peak_mib']:.0f} MiB, "
                f"RSS after {result['rss_after']:.0f} MiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
