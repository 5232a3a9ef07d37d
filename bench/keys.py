"""Key set costs: generation, load (parse + key checks), JWKS rendering, signing-key choice.

Run from the repository root: PYTHONPATH=. /work/venv/bin/python bench/keys.py
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

from kube_sts.runtime.keys import keyset


def measure(label: str, action: Callable[[], object], runs: int) -> None:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    median = statistics.median(samples) * 1000
    worst = max(samples) * 1000
    print(f"{label:<44} median {median:8.3f} ms   max {worst:8.3f} ms   ({runs} runs)")


def main() -> None:
    for algorithm, runs in (("RS256", 20), ("ES256", 200)):
        measure(
            f"generate {algorithm}",
            functools.partial(keyset.generate, algorithm, created=0, sign_from=0, sign_until=10),
            runs,
        )
        keys = keyset.KeySet(
            tuple(keyset.generate(algorithm, created=0, sign_from=i, sign_until=i + 100) for i in range(3))
        )
        data = keyset.dumps(keys)
        measure(f"loads 3-key {algorithm} set ({len(data)} bytes)", functools.partial(keyset.loads, data), runs)
        measure(f"jwks of 3-key {algorithm} set", functools.partial(keys.jwks, 50), 1000)
        measure(f"signing_key on 3-key {algorithm} set", functools.partial(keys.signing_key, 50), 10000)


if __name__ == "__main__":
    main()
