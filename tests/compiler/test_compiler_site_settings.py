"""Scheduling and site settings: nodeSelector, tolerations, affinity, priority class, pull
secrets, labels and annotations on every object, and the optional ServiceMonitor."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import ruamel.yaml

from kube_sts.compiler import diagnostics, manifest
from tests.compiler.test_compiler_availability_egress import values

SITE = """\
  nodeSelector: {kubernetes.io/os: linux, node-role.example.com/infra: ""}
  tolerations:
  - {key: dedicated, operator: Equal, value: infra, effect: NoSchedule}
  - {operator: Exists, effect: NoExecute, tolerationSeconds: 30}
  imagePullSecrets: [registry-credentials]
  commonLabels: {team: identity, cost-center: "42"}
  commonAnnotations: {example.com/owner: "identity@example.com"}
"""


def documents(text: str) -> list[dict[str, Any]]:
    found = list(ruamel.yaml.YAML(typ="safe", pure=True).load_all(manifest.compile_values(text).text))
    for document in found:
        if document["apiVersion"] not in {"cert-manager.io/v1", "monitoring.coreos.com/v1"}:
            kubernetes_validate.validate(document, "1.31.0", strict=True)
    return found


def one(found: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [document] = [d for d in found if d["kind"] == kind]
    return document


def test_defaults_keep_the_anti_affinity_and_use_a_rendered_priority_class() -> None:
    found = documents(values())
    pod = one(found, "Deployment")["spec"]["template"]["spec"]
    assert "podAntiAffinity" in pod["affinity"]
    assert not {"nodeSelector", "tolerations", "imagePullSecrets"} & set(pod)
    priority = one(found, "PriorityClass")
    assert pod["priorityClassName"] == priority["metadata"]["name"] == "kube-sts-webhook"
    assert 0 < priority["value"] < 2_000_000_000 and "globalDefault" not in priority
    kinds = [d["kind"] for d in found]
    assert kinds.index("PriorityClass") < kinds.index("Deployment")
    assert "ServiceMonitor" not in kinds


def test_scheduling_and_site_settings_reach_the_pods_and_every_object() -> None:
    found = documents(values(extra=SITE))
    deployment = one(found, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "node-role.example.com/infra": ""}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"},
        {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
    ]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    for document in found:
        metadata = document["metadata"]
        assert metadata["labels"]["team"] == "identity" and metadata["labels"]["cost-center"] == "42"
        assert metadata["annotations"]["example.com/owner"] == "identity@example.com"
        assert metadata["labels"]["app.kubernetes.io/name"] == "kube-sts"
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "identity" and "kube-sts.tremolo.io/config-sha256" in template["annotations"]
    assert "team" not in deployment["spec"]["selector"]["matchLabels"]


def test_affinity_and_priority_class_overrides() -> None:
    affinity = (
        "  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms:"
        " [{matchExpressions: [{key: pool, operator: In, values: [infra]}]}]}}}\n"
    )
    found = documents(values(extra=affinity + "  priorityClassName: platform-critical\n"))
    pod = one(found, "Deployment")["spec"]["template"]["spec"]
    assert list(pod["affinity"]) == ["nodeAffinity"] and pod["priorityClassName"] == "platform-critical"
    assert "PriorityClass" not in [d["kind"] for d in found]
    found = documents(values(extra='  priorityClassName: ""\n'))
    assert "priorityClassName" not in one(found, "Deployment")["spec"]["template"]["spec"]
    assert "PriorityClass" not in [d["kind"] for d in found]


def test_an_invalid_affinity_is_refused_by_strict_validation() -> None:
    found = list(
        ruamel.yaml.YAML(typ="safe", pure=True).load_all(
            manifest.compile_values(values(extra="  affinity: {nodeAfinity: {}}\n")).text
        )
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(one(found, "Deployment"), "1.31.0", strict=True)


def test_service_monitor_scrapes_metrics_over_https_with_the_runtimes_ca() -> None:
    found = documents(values(extra="  serviceMonitor: {enabled: true, labels: {release: prometheus}}\n"))
    monitor = one(found, "ServiceMonitor")
    assert (
        monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prometheus"
    )
    [endpoint] = monitor["spec"]["endpoints"]
    service = one(found, "Service")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    assert endpoint["tlsConfig"] == {
        "serverName": "kube-sts.kube-sts.svc",
        "ca": {"secret": {"name": "kube-sts-tls", "key": "ca.crt"}},
    }


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("  commonLabels: {app.kubernetes.io/name: mine}\n", "sts.commonLabels"),
        ('  commonLabels: {team: "not a value"}\n', "sts.commonLabels.team"),
        ("  nodeSelector: {bad key: x}\n", "sts.nodeSelector"),
        ("  tolerations: [{operator: Sometimes}]\n", "sts.tolerations[0].operator"),
        ("  imagePullSecrets: [Not_A_Name]\n", "sts.imagePullSecrets[0]"),
    ],
)
def test_invalid_site_settings_are_refused(extra: str, path: str) -> None:
    with pytest.raises(diagnostics.ValuesError) as caught:
        manifest.compile_values(values(extra=extra))
    assert next(d.path for d in caught.value.diagnostics).startswith(path)
