"""The authorizer's remembered decisions: the same answers as the rules, in bounded memory."""

from __future__ import annotations

import pytest

from kube_sts.runtime import authorizer
from tests.runtime import harness


def subject(namespace: str, role: str | None = None) -> authorizer.Subject:
    return authorizer.Subject("c", namespace, "app", "pod-1", role, "aws")


def test_remembered_decisions_match_the_rules() -> None:
    rules = authorizer.Authorizer(harness.endpoint(rules=["(&(namespace=team-*)(role=*))"]))
    for _ in range(2):  # the second pass answers from memory
        assert rules.allows(subject("team-a", "arn:aws:iam::1:role/x"))
        assert not rules.allows(subject("team-a"))
        assert not rules.allows(subject("other", "arn:aws:iam::1:role/x"))


def test_no_rules_deny_everyone() -> None:
    assert not authorizer.Authorizer(harness.endpoint(rules=[])).allows(subject("anything"))


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(authorizer, "MAX_DECISIONS", 10)
    rules = authorizer.Authorizer(harness.endpoint(rules=["(namespace=ns-1*)"]))
    answers = [rules.allows(subject(f"ns-{index}")) for index in range(25)]
    assert len(rules._decisions) <= 10
    assert answers == [str(index).startswith("1") for index in range(25)]
