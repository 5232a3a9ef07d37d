"""One replica behind a fail-closed webhook is refused; the NetworkPolicy's egress admits exactly
what the runtime calls (API server, cluster DNS, the issuer's JWKS when it waits for it)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import ruamel.yaml

from kube_sts.compiler import diagnostics, manifest, source
from tests.compiler.values_files import aws_values


def values(wait: bool = True, extra: str = "") -> str:
    return aws_values(issuer=f"      keys:\n        waitForPublication: {'true' if wait else 'false'}\n") + extra


def rendered(text: str, kind: str) -> dict[str, Any]:
    documents = ruamel.yaml.YAML(typ="safe", pure=True).load_all(manifest.compile_values(text).text)
    (found,) = [document for document in documents if document["kind"] == kind]
    assert isinstance(found, dict)
    kubernetes_validate.validate(found, "1.31.0", strict=True)
    return found


def test_one_replica_behind_a_fail_closed_webhook_is_refused() -> None:
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(values(extra="  replicas: 1\n"))
    (problem,) = caught.value.diagnostics
    assert (problem.line, problem.column, problem.path, problem.code) == (18, 13, "sts.replicas", "single-replica")
    assert "labelled Pods are refused" in problem.message
    assert "webhook.failurePolicy to Ignore" in problem.message


def test_one_replica_is_accepted_when_the_trade_off_is_chosen() -> None:
    # The webhook lets labelled Pods through while the only replica restarts: the budget (one
    # replica may be evicted) then matches what the configuration says.
    text = values(extra="  replicas: 1\n  webhook:\n    failurePolicy: Ignore\n")
    budget = rendered(text, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert rendered(text, "Deployment")["spec"]["replicas"] == 1


def rules(policy: dict[str, Any]) -> list[tuple[tuple[str, ...], tuple[tuple[str, int], ...]]]:
    out = []
    for rule in policy["spec"]["egress"]:
        peers = tuple(
            peer["ipBlock"]["cidr"]
            if "ipBlock" in peer
            else "namespace=" + peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for peer in rule["to"]
        )
        out.append((peers, tuple((port["protocol"], port["port"]) for port in rule["ports"])))
    return out


def test_egress_allows_exactly_what_the_runtime_calls() -> None:
    policy = rendered(values(), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert rules(policy) == [
        (("0.0.0.0/0", "::/0"), (("TCP", 443), ("TCP", 6443))),  # the API server, address cluster-specific
        (("namespace=kube-system",), (("UDP", 53), ("TCP", 53))),  # cluster DNS
        (("0.0.0.0/0", "::/0"), (("TCP", 443),)),  # https://<issuer>/certs (waitForPublication)
    ]


def test_egress_narrowed_and_without_the_issuer_when_nothing_waits_for_it() -> None:
    extra = (
        "  networkPolicy:\n"
        "    apiServer: [172.20.0.1/32, 10.0.0.0/24]\n"
        "    apiServerPorts: [443]\n"
        "    dnsNamespace: dns\n"
    )
    policy = rendered(values(wait=False, extra=extra), "NetworkPolicy")
    assert rules(policy) == [
        (("172.20.0.1/32", "10.0.0.0/24"), (("TCP", 443),)),
        (("namespace=dns",), (("UDP", 53), ("TCP", 53))),
    ]


def test_egress_settings_are_checked() -> None:
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(values(extra="  networkPolicy:\n    apiServer: [10.0.0.1/8]\n    apiServerPorts: [0]\n"))
    found = [(d.line, d.code, d.message) for d in caught.value.diagnostics]
    assert [(line, code) for line, code, _ in found] == [(19, "invalid-value"), (20, "greater-than-equal")]
    with pytest.raises(diagnostics.ValuesError, match="1 problem"):
        source.parse(values(extra="  networkPolicy:\n    issuer: []\n"))
    assert "'10.0.0.1/8' is not a CIDR block" in found[0][2]
