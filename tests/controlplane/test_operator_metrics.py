"""The operators' metrics of the runtime process (server.build), scraped from /metrics and read
with prometheus_client's parser: admissions by outcome, the key sets' state, the certificate's expiry."""

from __future__ import annotations

import copy
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from harness.reviews import seed_pod
from tests.controlplane import deployment
from tests.controlplane.test_admission import create, named


def samples(runtime: deployment.Runtime) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = runtime.get("/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def admissions(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str) -> float:
    key = ("kube_sts_webhook_admissions_total", (("endpoint", "aws"), ("outcome", outcome)))
    return found.get(key, 0.0)


def test_metrics_count_admissions_by_outcome_and_show_key_and_certificate_state(
    runtime: deployment.Runtime, namespace: str
) -> None:
    before = samples(runtime)
    plane = runtime.deployment.plane
    create(plane, namespace, named(seed_pod(), namespace, "labelled"))
    plain: dict[str, Any] = copy.deepcopy(seed_pod())
    plain["metadata"]["labels"] = {"app": "plain"}
    plain["metadata"]["annotations"] = {}
    create(plane, namespace, named(plain, namespace, "plain"))
    after = samples(runtime)
    assert admissions(after, "injected") == admissions(before, "injected") + 1
    assert admissions(after, "refused") == admissions(before, "refused")
    # the unlabelled Pod: the API server sends every Pod the configuration's selectors match
    assert admissions(after, "unchanged") >= admissions(before, "unchanged")
    endpoint = (("endpoint", "aws"),)
    assert after[("kube_sts_signing_key_available", endpoint)] == 1
    assert after[("kube_sts_signing_key_age_seconds", endpoint)] >= 0
    assert after[("kube_sts_keys_published", endpoint)] >= 1
    assert after[("kube_sts_keys_waiting_for_publication", endpoint)] == 0  # the tier does not wait
    expiry = after[("kube_sts_tls_certificate_expiry_timestamp_seconds", ())]
    assert expiry > time.time()
    print({name: value for (name, _), value in after.items() if name.startswith("kube_sts_") and "http" not in name})
