"""The one update-with-retry helper the managers share (``kube.api.read_modify_write``)."""

from __future__ import annotations

import pytest

from kube_sts.runtime.kube import api


def test_a_conflict_reads_again_until_the_write_lands() -> None:
    outcomes: list[Exception | str] = [
        api.ConflictError(409, "Conflict", "changed"),
        api.AlreadyExistsError(409, "AlreadyExists", "created meanwhile"),
        "written",
    ]

    def attempt() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert api.read_modify_write(attempt, attempts=3) == "written"
    assert outcomes == []


def test_attempts_are_bounded_and_other_errors_are_the_callers() -> None:
    calls: list[int] = []

    def conflicting() -> None:
        calls.append(1)
        raise api.ConflictError(409, "Conflict", "changed")

    with pytest.raises(api.ChangedError, match="kept changing during 4 attempts"):
        api.read_modify_write(conflicting, attempts=4)
    assert len(calls) == 4

    def refused() -> None:
        calls.append(1)
        raise api.UnavailableError(503, "ServiceUnavailable", "down")

    calls.clear()
    with pytest.raises(api.UnavailableError):
        api.read_modify_write(refused, attempts=4)
    assert len(calls) == 1
