"""The sidecar's resident memory after its first refresh and its CPU time while idle.

Runs ``kube-sts-sidecar`` (the installed console script) against a local HTTPS token service
that mints 4-second tokens, so the first refresh comes after about 2 s; then tokens last an hour
and the sidecar's CPU time is sampled from /proc over an idle window.

Run from the repository root:

    PYTHONPATH=. /work/venv/bin/python bench/sidecar.py [--idle 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from harness import runtime as harness
from harness.token_service import SA_TOKEN, TokenService

TARGET_RSS_MB = 20.0


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_writes(path: pathlib.Path, count: int, seconds: float) -> None:
    seen: set[bytes] = set()
    deadline = time.monotonic() + seconds
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the sidecar did not write its token in time")
        with contextlib.suppress(FileNotFoundError):
            seen.add(path.read_bytes())
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=float, default=10.0, help="idle window in seconds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kube-sts-bench-") as workdir:
        directory = pathlib.Path(workdir)
        tls = harness.make_tls(directory / "tls")
        service = TokenService(tls, lifetime=4)
        (directory / "sa").write_text(SA_TOKEN)
        token = directory / "token"
        script = pathlib.Path(sys.executable).parent / "kube-sts-sidecar"
        command = [str(script), "--url", service.url, "--service-account-token", str(directory / "sa")]
        command += ["--token-file", str(token), "--ca-file", str(tls.ca)]
        process = subprocess.Popen(command)
        try:
            wait_writes(token, 2, 15)  # the first token and the first refresh (distinct tokens)
            rss = rss_mb(process.pid)
            service.lifetime = 3600
            wait_writes(token, 2, 15)  # the refresh due from the 4-second token
            before = cpu_seconds(process.pid)
            time.sleep(args.idle)
            idle_cpu = cpu_seconds(process.pid) - before
            total_cpu = cpu_seconds(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(10)
            service.close()
    print("kube-sts-sidecar footprint")
    verdict = "meets" if rss < TARGET_RSS_MB else "ABOVE"
    print(f"  RSS after the first refresh: {rss:.1f} MB ({verdict} the {TARGET_RSS_MB:.0f} MB target)")
    print(
        f"  CPU time while idle: {idle_cpu * 1000:.0f} ms over {args.idle:.0f} s; total since start {total_cpu:.2f} s"
    )
    print(f"  exit status on SIGTERM: {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
