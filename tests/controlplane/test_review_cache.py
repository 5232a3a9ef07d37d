"""The review cache holds only what rules use, bounded in bytes, and forgets expired entries,
with TokenRequests bound to real Pods whose annotations the real API server stores (200 KiB of
them on one Pod; the runtime reads them as PartialObjectMetadata). The cache's own bound in bytes
is tests/adversarial/test_review_cache_memory.py.

Figures: ``pytest -s tests/controlplane/test_review_cache.py -k huge``.
"""

from __future__ import annotations

import gc
import pathlib
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from harness import runtime as harness
from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tokens import callers
from tests.controlplane import cluster
from tests.controlplane.test_exchange import create_pod

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
def app(runtime_kube: kubeapi.KubeAPI, tmp_path: pathlib.Path, clock: Clock) -> Iterator[server.App]:
    harness.write_keyset(tmp_path, "aws", "RS256")
    runtime = harness.runtime_config(harness.endpoint(rules=["(&(namespace=myns)(role=*))"]))
    application = harness.make_app(runtime, runtime_kube, tmp_path, clock=clock)
    yield application
    application.executor.shutdown(wait=True)


def exchange(app: server.App, token: str) -> harness.Answer:
    return harness.asgi_call(app, "POST", "/aws/token", {"authorization": f"Bearer {token}"})


def test_valid_tokens_with_huge_annotations_do_not_grow_memory(
    plane: cluster.ControlPlane, app: server.App, denied: str
) -> None:
    """Valid tokens of a denied namespace whose Pod carries 200 KiB of annotations."""
    annotations = {"tremolo.io/aws-role": ROLE, "notes": "x" * ANNOTATIONS, "more": "y" * 1000}
    pod = create_pod(plane, denied, "big", labelled=False, annotations=annotations)
    tokens = [plane.token(denied, "app", harness.STS_AUDIENCE, pod=pod) for _ in range(TOKENS)]
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


def test_identity_keeps_only_the_role_annotation(plane: cluster.ControlPlane, app: server.App) -> None:
    pod = create_pod(
        plane, "myns", "cache-notes", labelled=False, annotations={"tremolo.io/aws-role": ROLE, "notes": "x" * 1000}
    )
    token = plane.token("myns", "app", harness.STS_AUDIENCE, pod=pod)
    assert exchange(app, token).status == 200
    (identity,) = [entry[0] for entry in app.callers.cache._entries.values()]
    assert identity.roles == (("tremolo.io/aws-role", ROLE),)


def test_an_oversized_role_annotation_is_never_kept_and_never_matches(
    plane: cluster.ControlPlane, app: server.App
) -> None:
    annotations = {"tremolo.io/aws-role": ROLE + "x" * ANNOTATIONS}
    pod = create_pod(plane, "myns", "cache-oversized", labelled=False, annotations=annotations)
    token = plane.token("myns", "app", harness.STS_AUDIENCE, pod=pod)
    answer = exchange(app, token)
    assert (answer.status, answer.json()["error"]) == (403, "denied")  # (role=*) must not match it
    (identity,) = [entry[0] for entry in app.callers.cache._entries.values()]
    assert identity.roles == (("tremolo.io/aws-role", callers.ROLE_TOO_LONG),)
    assert identity.cost() < 2048


def test_expired_entries_are_purged(plane: cluster.ControlPlane, app: server.App, clock: Clock) -> None:
    pod = create_pod(plane, "myns", "cache-purge", labelled=False, annotations={"tremolo.io/aws-role": ROLE})
    for _ in range(20):
        assert exchange(app, plane.token("myns", "app", harness.STS_AUDIENCE, pod=pod)).status == 200
    assert len(app.callers.cache) == 20
    clock.offset = app.callers.cache_ttl + 1  # every entry has expired; none is ever asked for again
    assert exchange(app, plane.token("myns", "app", harness.STS_AUDIENCE, pod=pod)).status == 200
    assert len(app.callers.cache) == 1
