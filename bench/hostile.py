"""What unauthenticated hostile clients cost the real ``kube-sts-server`` process on loopback.

The compiled AWS example in runtime TLS mode, with the API server double. Printed:

- header flood: one request with ``--flood-mib`` MiB of repeated 16-byte headers; the answer,
  the bytes sent when the server answered, and ``/healthz`` probes meanwhile (a new TLS
  connection every 100 ms with a 1 s timeout, like the kubelet's): how many failed and the worst
  latency, i.e. the event-loop stall;
- big header: ``--big-clients`` clients each sending one header of ``--big-mib`` MiB; RSS before
  and after, and what they were answered;
- slowloris: ``--rounds`` rounds of ``--slow`` TLS connections that send half a request line
  and nothing more, plus ``--raw`` TCP connections that never start their TLS handshake (the
  server holds at most ``max_connections`` handshaken ones and closes the least recently active
  to serve a new one); how many the server holds right after they opened and ``--hold`` seconds
  after the last opened, ``/healthz`` probes and legitimate exchanges answered meanwhile, RSS
  before, at the peak and after they closed.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python bench/hostile.py [--flood-mib 1] [--slow 2000] [--hold 15] [--only slowloris]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from harness import attacks


def header_flood(runtime: Any, mib: float) -> dict[str, Any]:
    context = runtime.client_context()
    prober = attacks.Prober(context, runtime.port)
    prober.start()
    time.sleep(0.5)
    started = time.perf_counter()
    status, body, sent = attacks.header_flood(context, runtime.port, int(mib * 1024 * 1024))
    elapsed = time.perf_counter() - started
    time.sleep(0.5)
    probes = prober.stop()
    return {
        "header_bytes": int(mib * 1024 * 1024),
        "answer": status,
        "error": _code(body),
        "sent_when_answered": sent,
        "seconds": round(elapsed, 3),
        "healthz_probes": probes["probes"],
        "healthz_failed": probes["failed"],
        "healthz_worst_s": round(probes["max_s"], 3),
    }


def big_header(runtime: Any, mib: float, clients: int) -> dict[str, Any]:
    pid = attacks.pid(runtime)
    before = attacks.rss_mb(pid)
    answers: list[tuple[int, str | None, int]] = []
    peak = [before]

    def one() -> None:
        status, body, sent = attacks.header_flood(
            runtime.client_context(), runtime.port, int(mib * 1024 * 1024), header=b""
        )
        answers.append((status, _code(body), sent))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak[0] = max(peak[0], attacks.rss_mb(pid))
        time.sleep(0.05)
    return {
        "header_mib": mib,
        "clients": clients,
        "answers": [{"status": s, "error": c, "sent": n} for s, c, n in answers],
        "rss_mb_before": round(before, 1),
        "rss_mb_peak": round(peak[0], 1),
        "rss_mb_after": round(attacks.rss_mb(pid), 1),
    }


ROLE = "arn:aws:iam::123456789012:role/app"


class Exchanger(attacks.Prober):
    """A legitimate workload: ``POST /aws/token`` with a token the cluster signed, on a new TLS
    connection every ``interval`` seconds."""

    def __init__(self, runtime: Any, interval: float = 0.2, timeout: float = 2.0) -> None:
        super().__init__(runtime.client_context(), runtime.port, interval, timeout)
        pod = runtime.api.add_pod("myns", "bench-exchange", annotations={"tremolo.io/aws-role": ROLE})
        self.token = runtime.api.issue_token("myns", "app", pod=pod, audiences=["kube-sts"])
        self.answers: dict[str, int] = {}

    def run(self) -> None:
        while not self.done.is_set():
            started = time.perf_counter()
            try:
                with attacks.tls_connect(self.context, self.port, self.timeout) as sock:
                    sock.sendall(
                        b"POST /aws/token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\nAuthorization: Bearer " + self.token.encode() + b"\r\n\r\n"
                    )
                    status, body = attacks.status_and_body(attacks.read_answer(sock, self.timeout))
                outcome = "ok" if status == 200 else str(_code(body))
            except (OSError, ValueError, IndexError):
                outcome = "failed to connect or no answer"
            self.answers[outcome] = self.answers.get(outcome, 0) + 1
            self.latencies.append(time.perf_counter() - started)
            self.failures += outcome != "ok"
            self.done.wait(max(0.0, self.interval - (time.perf_counter() - started)))


def slowloris(runtime: Any, slow: int, raw: int, hold: float, rounds: int) -> list[dict[str, Any]]:
    """Rounds of ``slow`` stalled TLS connections and ``raw`` silent TCP connections, with the
    kubelet's probe and a legitimate exchange running throughout; RSS before, at the peak and
    once the server returned memory after they closed (it checks every few seconds)."""
    pid = attacks.pid(runtime)
    context = runtime.client_context()
    before = attacks.rss_mb(pid)
    results = []
    for _ in range(rounds):
        prober, exchanger = attacks.Prober(context, runtime.port), Exchanger(runtime)
        prober.start()
        exchanger.start()
        started = time.monotonic()
        tls = attacks.stalled_connections(context, runtime.port, slow)
        plain = attacks.stalled_connections(None, runtime.port, raw)
        opened = time.monotonic() - started
        peak = attacks.rss_mb(pid)
        tls_answers: dict[int, bytes] = {}
        held_tls, held_raw = attacks.still_open(tls, tls_answers), attacks.still_open(plain)
        time.sleep(hold)  # from the last connection opened
        later_tls, later_raw = attacks.still_open(tls, tls_answers), attacks.still_open(plain)
        probes, exchanges = prober.stop(), exchanger.answers
        exchanger.stop()
        answered: dict[str, int] = {}
        for answer in tls_answers.values():
            code = (_code(answer.partition(b"\r\n\r\n")[2]) if answer else None) or "closed"
            answered[code] = answered.get(code, 0) + 1
        for sock in tls + plain:
            with contextlib.suppress(OSError):
                sock.close()
        after = attacks.rss_mb(pid)
        deadline = time.monotonic() + 20
        while after > before + 5 and time.monotonic() < deadline:
            time.sleep(0.5)
            after = attacks.rss_mb(pid)
        results.append(
            {
                "tls_opened": len(tls),
                "tcp_opened": len(plain),
                "seconds_to_open": round(opened, 1),
                "held_right_after": {"tls": held_tls, "tcp": held_raw},
                f"held_{hold:g}s_after_the_last_opened": {"tls": later_tls, "tcp": later_raw},
                "tls_answers": answered,
                "healthz_during": f"{probes['probes'] - probes['failed']}/{probes['probes']} answered 200",
                "exchanges_during": exchanges,
                "rss_mb_before": round(before, 1),
                "rss_mb_peak": round(peak, 1),
                "rss_mb_after": round(after, 1),
            }
        )
    return results


def _code(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:60].decode("latin-1") or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--flood-mib", type=float, default=1.0)
    parser.add_argument("--big-mib", type=float, default=64.0)
    parser.add_argument("--big-clients", type=int, default=2)
    parser.add_argument("--slow", type=int, default=2000)
    parser.add_argument("--raw", type=int, default=500)
    parser.add_argument("--hold", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["header_flood", "big_header", "slowloris"], help="run one attack")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    with tempfile.TemporaryDirectory() as tmp, attacks.runtime_process(pathlib.Path(tmp)) as runtime:
        attacks_run: dict[str, Callable[[], Any]] = {
            "header_flood": lambda: header_flood(runtime, args.flood_mib),
            "big_header": lambda: big_header(runtime, args.big_mib, args.big_clients),
            "slowloris": lambda: slowloris(runtime, args.slow, args.raw, args.hold, args.rounds),
        }
        results: dict[str, Any] = {"rss_mb_idle": round(attacks.rss_mb(attacks.pid(runtime)), 1)}
        for name, run in attacks_run.items():
            if args.only in (None, name):
                results[name] = run()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
