"""The review cache is bounded in bytes. What it keeps of real callers (only the rule attributes,
expired entries purged, 200 KiB of annotations not retained) is tests/controlplane/test_review_cache.py."""

from __future__ import annotations

from kube_sts.runtime.tokens import callers


def test_cache_is_bounded_in_bytes() -> None:
    cache = callers.ReviewCache(10_000, max_bytes=20_000)
    for index in range(1000):
        identity = callers.Identity("ns", "sa", f"pod-{index}", "uid", (("tremolo.io/aws-role", "r" * 1500),), 0)
        cache.put(index.to_bytes(4, "big"), identity, 100.0, 0.0)
        assert cache.bytes <= 20_000
    assert 0 < len(cache) < 20
    assert cache.get((999).to_bytes(4, "big"), 1.0) is not None and cache.get((0).to_bytes(4, "big"), 1.0) is None
    assert cache.bytes == sum(entry[2] for entry in cache._entries.values())
