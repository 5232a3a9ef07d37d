"""``injector.serviceAccountNamespaces`` compiled: a second webhook entry that matches exactly the
listed namespaces and leaves out labelled and opted-out Pods, valid strictly for every supported
Kubernetes version; the namespaces it may never list refused at their position, with the fix.
Without the key the rendered objects are those of label mode (the examples' snapshots)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from kube_sts.compiler import diagnostics, manifest
from kube_sts.runtime import config
from tests.compiler.test_compiler_diagnostics import GOOD, second

VERSIONS = ("1.29", "1.31", "1.33")


def webhooks(text: str) -> list[dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(manifest.compile_values(text).text) if d]
    [configuration] = [d for d in documents if d["kind"] == "MutatingWebhookConfiguration"]
    for version in VERSIONS:
        kubernetes_validate.validate(configuration, version, strict=True)
    hooks: list[dict[str, Any]] = configuration["webhooks"]
    return hooks


def listing(text: str, namespaces: str) -> str:
    return text.replace(
        "      label: aws-role\n", f"      label: aws-role\n      serviceAccountNamespaces: {namespaces}\n", 1
    )


def test_the_service_account_entry_matches_exactly_the_listed_namespaces() -> None:
    label, account = webhooks(listing(GOOD, "[team-a, team-b]"))
    assert label == webhooks(GOOD)[0]  # label mode unchanged
    assert account["name"] == "sa.aws.kube-sts.sts.tremolo.io"
    assert account["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]
    }
    assert account["objectSelector"] == {
        "matchExpressions": [
            {"key": "tremolo.io/aws-role", "operator": "DoesNotExist"},
            {"key": config.SKIP_LABEL, "operator": "DoesNotExist"},
            {"key": config.EKS_SKIP_LABEL, "operator": "DoesNotExist"},
        ]
    }
    same = ("clientConfig", "failurePolicy", "rules", "reinvocationPolicy", "sideEffects", "timeoutSeconds")
    assert {key: account[key] for key in same} == {key: label[key] for key in same}


def test_without_the_list_there_is_one_entry() -> None:
    assert [hook["name"] for hook in webhooks(GOOD)] == ["aws.kube-sts.sts.tremolo.io"]
    assert [hook["name"] for hook in webhooks(listing(GOOD, "[]"))] == ["aws.kube-sts.sts.tremolo.io"]


def problems(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(diagnostics.ValuesError) as caught:
        manifest.compile_values(text)
    return [(d.line, d.column, d.code, d.message) for d in caught.value.diagnostics]


def test_the_runtimes_namespace_is_refused_at_its_position() -> None:
    [(line, column, code, message)] = problems(listing(GOOD, "[team-a, kube-sts]"))
    assert (line, column, code) == (14, 42, "selects-own-namespace")
    assert message == (
        "endpoint 'aws': 'kube-sts' is the runtime's own namespace; its Pods are never injected (the runtime could "
        "not start while its webhook is down), so remove it from injector.serviceAccountNamespaces"
    )


def test_kube_system_is_refused_at_its_position() -> None:
    [(line, column, code, message)] = problems(listing(GOOD, "[team-a, kube-system]"))
    assert (line, column, code) == (14, 42, "invalid-value")
    assert "'kube-system': the webhook never selects Pods of kube-system" in message
    assert "remove it from serviceAccountNamespaces" in message


def test_two_aws_endpoints_may_not_select_one_namespace() -> None:
    text = listing(second(), "[team-a]")
    text = text.replace(
        "      label: aws2-role\n", "      label: aws2-role\n      serviceAccountNamespaces: [team-b, team-a]\n"
    )
    [(line, column, code, message)] = problems(text)
    assert (line, column, code) == (28, 42, "duplicate-service-account-namespace")
    assert message.startswith("'team-a' is also selected by sts.endpoints[0], and both endpoints read ")
