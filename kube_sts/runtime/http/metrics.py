"""Prometheus metrics, kept by ``prometheus_client`` in a private registry per ``Registry``.

The official client keeps the values (thread-safe, so threads and the event loop may both
record; cumulative ``le`` buckets, ``_sum`` and ``_count``) and collects them. This module is its
narrow face: counters and histograms with positional labels, gauges read at scrape time, a
registry per process (or per test) instead of the client's process-wide default one, and no
``_created`` series. ``render`` writes the collected samples in the text exposition format
(version 0.0.4) exactly as the runtime always has, whole numbers without a fraction (``... 1``,
where the client's own writer says ``1.0``), so dashboards, alerts and line-matching scrapers see the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import prometheus_client
from prometheus_client.core import GaugeMetricFamily

__all__ = ["CONTENT_TYPE", "Counter", "Histogram", "Registry", "Samples"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# The runtime's series are counts and latencies; creation timestamps would add one series per
# label set that nothing reads.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Metric:
    def __init__(self, registry: prometheus_client.CollectorRegistry, name: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.labelnames = tuple(labelnames)
        self._registry = registry

    def _check(self, labels: tuple[str, ...]) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labels}")

    def _sample(self, suffix: str, labels: tuple[str, ...]) -> float | None:
        self._check(labels)
        return self._registry.get_sample_value(self.name + suffix, dict(zip(self.labelnames, labels, strict=True)))


class Counter(_Metric):
    """A monotonically increasing count per label combination."""

    def __init__(
        self, registry: prometheus_client.CollectorRegistry, name: str, documentation: str, labelnames: Sequence[str]
    ) -> None:
        super().__init__(registry, name, labelnames)
        self._counter = prometheus_client.Counter(name, documentation, self.labelnames, registry=registry)
        self._children: dict[tuple[str, ...], prometheus_client.Counter] = {}
        """Each label set's child, looked up once (the client's ``labels()`` takes a lock each call)."""
        self._suffix = "" if name.endswith("_total") else "_total"

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        child = self._children.get(labels)
        if child is None:
            self._check(labels)
            child = self._children[labels] = self._counter.labels(*labels) if labels else self._counter
        child.inc(amount)

    def value(self, *labels: str) -> float:
        return self._sample(self._suffix, labels) or 0.0


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with ``_sum`` and ``_count``."""

    def __init__(
        self,
        registry: prometheus_client.CollectorRegistry,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        super().__init__(registry, name, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._histogram = prometheus_client.Histogram(
            name, documentation, self.labelnames, registry=registry, buckets=self.buckets
        )
        self._children: dict[tuple[str, ...], prometheus_client.Histogram] = {}

    def observe(self, value: float, *labels: str) -> None:
        child = self._children.get(labels)
        if child is None:
            self._check(labels)
            child = self._children[labels] = self._histogram.labels(*labels) if labels else self._histogram
        child.observe(value)

    def count(self, *labels: str) -> int:
        return int(self._sample("_count", labels) or 0)


Samples = Callable[[], Iterable[tuple[tuple[str, ...], float]]]
"""A gauge's current values, read at scrape time: (label values, value) pairs."""


class _GaugeCollector:
    """A gauge whose values are read from the running parts when ``/metrics`` is scraped."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], samples: Samples) -> None:
        self.name, self.documentation, self.labelnames, self.samples = name, documentation, tuple(labelnames), samples

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.samples():
            family.add_metric(list(labels), value)
        yield family


class Registry:
    """The metrics of one process (or one test), rendered in registration order."""

    def __init__(self) -> None:
        self._registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self._names: dict[str, str] = {}
        """The client's family name (a counter's without ``_total``) -> the registered name."""

    def _claim(self, name: str) -> None:
        if name in self._names.values():
            raise ValueError(f"metric {name} is already registered")
        self._names[name.removesuffix("_total")] = name

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        self._claim(name)
        return Counter(self._registry, name, documentation, labelnames)

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        self._claim(name)
        return Histogram(self._registry, name, documentation, labelnames, buckets)

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str], samples: Samples) -> None:
        """A gauge read from ``samples`` at every scrape (state such as key ages and expiries)."""
        self._claim(name)
        self._registry.register(_GaugeCollector(name, documentation, labelnames, samples))

    def render(self) -> bytes:
        lines: list[str] = []
        for family in self._registry.collect():
            name = self._names.get(family.name, family.name)
            lines += [f"# HELP {name} {family.documentation}", f"# TYPE {name} {family.type}"]
            for sample in family.samples:
                labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels.items())
                lines.append(f"{sample.name}{{{labels}}} {_number(sample.value)}" if labels else
                             f"{sample.name} {_number(sample.value)}")  # fmt: skip
        return ("\n".join(lines) + "\n").encode("utf-8")
