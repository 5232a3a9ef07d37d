"""Cold whole-process `sts-compile` timings: the AWS example, the OpenUnison example (a whole
OpenUnison values file) and a generated 100-endpoint file.

    /work/venv/bin/python bench/compile.py [--runs N]

Each run starts a fresh interpreter exactly as the `sts-compile` console script does and writes
the manifests to /dev/null (and the OpenUnison example's notes to stderr, discarded). Targets on a
2-core machine: AWS and OpenUnison examples < 0.5 s, 100 endpoints < 2 s.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = "import sys; from kube_sts.compiler.cli import main; sys.exit(main())"
TARGETS = {"aws example": 0.5, "openunison example": 0.5, "100 endpoints": 2.0}


def generated(count: int) -> str:
    lines = ["sts:", "  cluster: bench", "  endpoints:"]
    for i in range(count):
        lines += [
            f"  - name: ep{i:03d}",
            "    audience: sts.amazonaws.com",
            f"    path: /ep{i:03d}",
            "    azRules:",
            "    - scope: filter",
            f'      constraint: "(&(namespace=team{i})(!(saname=default)))"',
            "    issuer:",
            f"      host: d{i:03d}.cloudfront.net",
            f"      keypair: ep{i:03d}-keys",
            "    injector:",
            f"      label: ep{i:03d}-role",
            "      token_environment_variable_name: AWS_WEB_IDENTITY_TOKEN_FILE",
            "      label_value_environment_variable_name: AWS_ROLE_ARN",
        ]
    return "\n".join(lines) + "\n"


def cold_run(values: pathlib.Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "0"}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(values)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = pathlib.Path(tmp) / "values-100.yaml"
        big.write_text(generated(100))
        cases = {
            "aws example": ROOT / "examples" / "aws" / "values.yaml",
            "openunison example": ROOT / "examples" / "openunison" / "values.yaml",
            "100 endpoints": big,
        }
        for values in cases.values():
            cold_run(values)  # warm the OS page cache and bytecode cache; not counted
        failed = False
        print(f"cold sts-compile, whole process, {args.runs} runs each ({os.cpu_count()} CPUs)")
        for name, values in cases.items():
            times = sorted(cold_run(values) for _ in range(args.runs))
            median = statistics.median(times)
            ok = median < TARGETS[name]
            failed |= not ok
            print(
                f"  {name:18s} median {median:.3f} s  min {times[0]:.3f} s  max {times[-1]:.3f} s"
                f"  target < {TARGETS[name]} s  {'ok' if ok else 'MISSED'}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
