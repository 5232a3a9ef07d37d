"""What unauthenticated hostile clients cost the real ``kube-sts-server`` process on loopback.

The compiled AWS example in runtime TLS mode, with the API server double. Printed:

- header flood: one request with ``--flood-mib`` MiB of repeated 16-byte headers; the answer,
  the bytes sent when the server answered, and ``/healthz`` probes meanwhile (a new TLS
  connection every 100 ms with a 1 s timeout, like the kubelet's): how many failed and the worst
  latency, i.e. the event-loop stall;
- big header: ``--big-clients`` clients each sending one header of ``--big-mib`` MiB; RSS before
  and after, and what they were answered;
- slowloris: ``--slow`` TLS connections that send half a request line and nothing more, plus
  ``--raw`` TCP connections that never start their TLS handshake; how many the server holds
  right after they opened and ``--hold`` seconds later, RSS before, during and after.

Run from the repository root:

    PYTHONPATH=. .venv/bin/python bench/hostile.py [--flood-mib 1] [--slow 2000] [--hold 15]
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
from typing import Any

from tests.adversarial import attacks


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


def slowloris(runtime: Any, slow: int, raw: int, hold: float) -> dict[str, Any]:
    pid = attacks.pid(runtime)
    context = runtime.client_context()
    before = attacks.rss_mb(pid)
    started = time.monotonic()
    tls = attacks.stalled_connections(context, runtime.port, slow)
    plain = attacks.stalled_connections(None, runtime.port, raw)
    opened = time.monotonic() - started
    during = attacks.rss_mb(pid)
    tls_answers: dict[int, bytes] = {}
    held_tls, held_raw = attacks.still_open(tls, tls_answers), attacks.still_open(plain)
    probe = attacks.get(context, runtime.port, "/healthz")[0]
    time.sleep(max(0.0, hold - (time.monotonic() - started)))
    later_tls, later_raw = attacks.still_open(tls, tls_answers), attacks.still_open(plain)
    rss_later = attacks.rss_mb(pid)
    answered: dict[str, int] = {}
    for answer in tls_answers.values():
        code = _code(answer.partition(b"\r\n\r\n")[2]) if answer else "closed"
        answered[code or "closed"] = answered.get(code or "closed", 0) + 1
    for sock in tls + plain:
        with contextlib.suppress(OSError):
            sock.close()
    time.sleep(2.0)
    return {
        "tls_opened": len(tls),
        "tcp_opened": len(plain),
        "seconds_to_open": round(opened, 1),
        "held_right_after": {"tls": held_tls, "tcp": held_raw},
        "healthz_while_held": probe,
        f"held_after_{hold:g}s": {"tls": later_tls, "tcp": later_raw},
        "rss_mb_before": round(before, 1),
        "rss_mb_during": round(during, 1),
        f"rss_mb_after_{hold:g}s": round(rss_later, 1),
        "rss_mb_after_close": round(attacks.rss_mb(pid), 1),
        "tls_answers": answered,
    }


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
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    with tempfile.TemporaryDirectory() as tmp, attacks.runtime_process(pathlib.Path(tmp)) as runtime:
        results = {
            "rss_mb_idle": round(attacks.rss_mb(attacks.pid(runtime)), 1),
            "header_flood": header_flood(runtime, args.flood_mib),
            "big_header": big_header(runtime, args.big_mib, args.big_clients),
            "slowloris": slowloris(runtime, args.slow, args.raw, args.hold),
        }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
