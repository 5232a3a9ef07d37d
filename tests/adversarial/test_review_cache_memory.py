"""The review cache holds only what rules use, bounded in bytes, and forgets expired entries.

Figures: ``pytest -s tests/adversarial/test_review_cache_memory.py``.
"""

from __future__ import annotations

import gc
import pathlib
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tokens import callers
from tests import apiserver
from tests.runtime import harness

ROLE = "arn:aws:iam::123456789012:role/app"
TOKENS = 200
ANNOTATIONS = 200 * 1024


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(kube: kubeapi.KubeAPI, tmp_path: pathlib.Path, clock: Clock) -> Iterator[server.App]:
    harness.write_keyset(tmp_path, "aws", "RS256")
    runtime = harness.runtime_config(harness.endpoint(rules=["(&(namespace=myns)(role=*))"]))
    application = harness.make_app(runtime, kube, tmp_path, clock=clock)
    yield application
    application.executor.shutdown(wait=True)


def exchange(app: server.App, token: str) -> harness.Answer:
    return harness.asgi_call(app, "POST", "/aws/token", {"authorization": f"Bearer {token}"})


def test_valid_tokens_with_huge_annotations_do_not_grow_memory(
    api_server: apiserver.APIServer, app: server.App
) -> None:
    """Valid tokens of a denied namespace whose Pod carries 200 KiB of annotations."""
    pod = api_server.add_pod(
        "denied", "big", annotations={"tremolo.io/aws-role": ROLE, "notes": "x" * ANNOTATIONS, "more": "y" * 1000}
    )
    tokens = [api_server.issue_token("denied", "app", pod=pod, audiences=[harness.STS_AUDIENCE]) for _ in range(TOKENS)]
    app.callers.cache_ttl = 3600.0  # every identity stays cached for the whole test
    assert exchange(app, tokens[0]).status == 403  # warm up: keys read, imports done
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        statuses = {exchange(app, token).status for token in tokens[1:]}
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(
        f"\nreview cache: {TOKENS - 1} valid tokens of a denied namespace, Pod annotations {ANNOTATIONS // 1024} KiB: "
        f"memory retained {retained / 1e6:.2f} MB, cache {len(app.callers.cache)} entries, "
        f"{app.callers.cache.bytes / 1e3:.1f} kB accounted"
    )
    assert statuses == {403}
    assert len(app.callers.cache) == TOKENS  # identities are cached, but only their rule attributes
    assert app.callers.cache.bytes < TOKENS * 2048
    assert retained < 5_000_000  # before: the annotations of every token, about 41 MB


def test_identity_keeps_only_the_role_annotation(api_server: apiserver.APIServer, app: server.App) -> None:
    pod = api_server.add_pod("myns", "app-1", annotations={"tremolo.io/aws-role": ROLE, "notes": "x" * 1000})
    token = api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE])
    assert exchange(app, token).status == 200
    (identity,) = [entry[0] for entry in app.callers.cache._entries.values()]
    assert identity.roles == (("tremolo.io/aws-role", ROLE),)


def test_an_oversized_role_annotation_is_never_kept_and_never_matches(
    api_server: apiserver.APIServer, app: server.App
) -> None:
    pod = api_server.add_pod("myns", "app-1", annotations={"tremolo.io/aws-role": ROLE + "x" * ANNOTATIONS})
    token = api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE])
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (403, "denied")  # (role=*) must not match it
    (identity,) = [entry[0] for entry in app.callers.cache._entries.values()]
    assert identity.roles == (("tremolo.io/aws-role", callers.ROLE_TOO_LONG),)
    assert identity.cost() < 2048


def test_expired_entries_are_purged(api_server: apiserver.APIServer, app: server.App, clock: Clock) -> None:
    pod = api_server.add_pod("myns", "app-1", annotations={"tremolo.io/aws-role": ROLE})
    for _ in range(20):
        assert (
            exchange(app, api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE])).status
            == 200
        )
    assert len(app.callers.cache) == 20
    clock.offset = app.callers.cache_ttl + 1  # every entry has expired; none is ever asked for again
    assert exchange(app, api_server.issue_token("myns", "app", pod=pod, audiences=[harness.STS_AUDIENCE])).status == 200
    assert len(app.callers.cache) == 1


def test_cache_is_bounded_in_bytes() -> None:
    cache = callers.ReviewCache(10_000, max_bytes=20_000)
    for index in range(1000):
        identity = callers.Identity("ns", "sa", f"pod-{index}", "uid", (("tremolo.io/aws-role", "r" * 1500),), 0)
        cache.put(index.to_bytes(4, "big"), identity, 100.0, 0.0)
        assert cache.bytes <= 20_000
    assert 0 < len(cache) < 20
    assert cache.get((999).to_bytes(4, "big"), 1.0) is not None and cache.get((0).to_bytes(4, "big"), 1.0) is None
    assert cache.bytes == sum(entry[2] for entry in cache._entries.values())
