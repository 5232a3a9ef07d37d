"""The background runner shared by the key and TLS managers."""

from __future__ import annotations

import logging
import threading

import pytest

from kube_sts.runtime import periodic


def test_a_failing_round_is_logged_and_the_next_round_runs(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []
    third = threading.Event()

    def round_() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 2:
            raise RuntimeError("the second round breaks")
        if len(rounds) >= 3:
            third.set()

    runner = periodic.Periodic("kube-sts-test", round_, 0.01)
    with caplog.at_level(logging.ERROR, logger="kube_sts.periodic"):
        runner.start()
        assert rounds == [0]  # the first round runs in the caller
        assert third.wait(10)
        runner.stop()
    assert [record.getMessage() for record in caplog.records] == ["kube-sts-test: round failed"]


def test_a_failing_first_round_is_the_callers() -> None:
    def round_() -> None:
        raise RuntimeError("no certificate")

    runner = periodic.Periodic("kube-sts-test", round_, 0.01)
    with pytest.raises(RuntimeError, match="no certificate"):
        runner.start()
    runner.stop()
