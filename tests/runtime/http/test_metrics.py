"""The Prometheus exposition of ``runtime.metrics``, read back by the official client's parser."""

from __future__ import annotations

import math
import threading

import pytest
from prometheus_client import parser
from prometheus_client.metrics_core import Metric

from kube_sts.runtime.http import metrics


def families(registry: metrics.Registry) -> dict[str, Metric]:
    return {family.name: family for family in parser.text_string_to_metric_families(registry.render().decode())}


def test_counters_and_histograms_parse() -> None:
    registry = metrics.Registry()
    requests = registry.counter("kube_sts_test_requests_total", "Requests.", ("route", "code"))
    latency = registry.histogram("kube_sts_test_seconds", "Latency.", ("route",), buckets=(0.01, 0.1, 1.0))
    requests.inc("/aws/token", "200")
    requests.inc("/aws/token", "200")
    requests.inc('/odd"path\\x\n', "404")
    for value in (0.005, 0.01, 0.05, 2.0):
        latency.observe(value, "/aws/token")
    parsed = families(registry)
    counter = parsed["kube_sts_test_requests"]
    assert counter.type == "counter" and counter.documentation == "Requests."
    values = {(s.labels["route"], s.labels["code"]): s.value for s in counter.samples}
    assert values == {("/aws/token", "200"): 2.0, ('/odd"path\\x\n', "404"): 1.0}
    histogram = parsed["kube_sts_test_seconds"]
    assert histogram.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.01": 2.0, "0.1": 3.0, "1.0": 3.0, "+Inf": 4.0}
    by_name = {s.name: s.value for s in histogram.samples if not s.name.endswith("_bucket")}
    assert by_name["kube_sts_test_seconds_count"] == 4.0
    assert math.isclose(by_name["kube_sts_test_seconds_sum"], 2.065)
    assert latency.count("/aws/token") == 4


def test_label_arity_and_duplicate_names_are_errors() -> None:
    registry = metrics.Registry()
    counter = registry.counter("kube_sts_x_total", "X.", ("a",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc()
    with pytest.raises(ValueError, match="already registered"):
        registry.histogram("kube_sts_x_total", "Again.")


def test_concurrent_increments_are_not_lost() -> None:
    registry = metrics.Registry()
    counter = registry.counter("kube_sts_concurrent_total", "C.")

    def work() -> None:
        for _ in range(5000):
            counter.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value() == 20000


def test_empty_registry_renders_a_newline() -> None:
    assert metrics.Registry().render() == b"\n"


def test_gauges_are_read_at_each_scrape() -> None:
    registry = metrics.Registry()
    state = {"a": 1.0}
    registry.gauge("kube_sts_test_state", "state", ("endpoint",), lambda: [((k,), v) for k, v in state.items()])
    [sample] = families(registry)["kube_sts_test_state"].samples
    assert (sample.labels, sample.value) == ({"endpoint": "a"}, 1.0)
    state.update(a=2.0, b=0.0)
    values = {s.labels["endpoint"]: s.value for s in families(registry)["kube_sts_test_state"].samples}
    assert values == {"a": 2.0, "b": 0.0}
    assert families(registry)["kube_sts_test_state"].type == "gauge"
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("kube_sts_test_state", "again", (), list)
