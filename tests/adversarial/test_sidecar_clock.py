"""The sidecar on a node whose clock is 2 h off the token service's.

Refreshes are due at a fraction of the answer's ``expires_in`` after the answer arrived (monotonic
clock), so skew neither makes the sidecar refresh every second (clock ahead) nor wait past expiry
(clock behind); the probe judges the file by when it was written and the token's own lifetime.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import time
from typing import Any

import pytest

from harness import runtime as harness
from kube_sts.runtime import sidecar

LIFETIME = 600


def token(iat: int | None, exp: int) -> str:
    claims: dict[str, int] = {"exp": exp} | ({} if iat is None else {"iat": iat})
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJub25lIn0.{payload}.sig"


class RecordingStop(sidecar.Stop):
    """Records each wait of the loop and ends it after the first (no signal is blocked)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return bool(self.waits)

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return True


def first_wait(tmp_path: pathlib.Path, monkeypatch: Any, answer: dict[str, Any]) -> float:
    tls = harness.make_tls(tmp_path / "tls")
    (tmp_path / "sa").write_text("sa-token")
    argv = ["--url", "https://sts/aws/token", "--service-account-token", str(tmp_path / "sa")]
    args = sidecar.parse_arguments([*argv, "--token-file", str(tmp_path / "token"), "--ca-file", str(tls.ca)])
    monkeypatch.setattr(sidecar, "post", lambda *_: (200, json.dumps(answer).encode()))
    stop = RecordingStop()
    assert sidecar.run(args, stop) == 0
    assert (tmp_path / "token").read_text() == answer["token"]  # the wait follows a success
    return stop.waits[0]


@pytest.mark.parametrize("skew", [0, 7200, -7200], ids=["in-step", "service-2h-ahead", "service-2h-behind"])
def test_refresh_is_due_at_half_the_answers_lifetime_whatever_the_skew(
    tmp_path: pathlib.Path, monkeypatch: Any, skew: int
) -> None:
    server_now = int(time.time()) + skew
    minted = token(server_now, server_now + LIFETIME)
    answer = {"token": minted, "expires_at": server_now + LIFETIME, "expires_in": LIFETIME}
    wait = first_wait(tmp_path, monkeypatch, answer)
    print(f"skew {skew:+d} s: first refresh due after {wait:.1f} s of a {LIFETIME} s token")
    assert LIFETIME * 0.5 * 0.9 - 5 <= wait <= LIFETIME * 0.5 * 1.1


def test_without_expires_in_the_tokens_own_lifetime_is_used(tmp_path: pathlib.Path, monkeypatch: Any) -> None:
    server_now = int(time.time()) - 7200
    wait = first_wait(tmp_path, monkeypatch, {"token": token(server_now, server_now + LIFETIME)})
    assert LIFETIME * 0.5 * 0.9 - 5 <= wait <= LIFETIME * 0.5 * 1.1


def test_expires_in_longer_than_the_token_lives_is_not_believed(tmp_path: pathlib.Path, monkeypatch: Any) -> None:
    now = int(time.time())
    answer = {"token": token(now, now + LIFETIME), "expires_in": 100 * LIFETIME}
    assert first_wait(tmp_path, monkeypatch, answer) <= LIFETIME * 0.5 * 1.1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"token": token(100, 200), "expires_at": 201, "expires_in": 100}, "expires_at disagrees"),
        ({"token": token(200, 200), "expires_in": 100}, "lives no time"),
        ({"token": token(100, 200), "expires_in": 0}, "lives no time"),
        ({"token": token(None, 200), "expires_in": -5}, "lives no time"),
    ],
)
def test_inconsistent_answers_are_exchange_errors(answer: dict[str, Any], message: str) -> None:
    with pytest.raises(sidecar.ExchangeError, match=message):
        sidecar.lifetime_of(answer, sidecar._claims(answer["token"]), time.time())


@pytest.mark.parametrize("skew", [0, 7200, -7200], ids=["in-step", "service-2h-ahead", "service-2h-behind"])
def test_the_probe_judges_a_fresh_token_valid_whatever_the_skew(tmp_path: pathlib.Path, skew: int) -> None:
    server_now = int(time.time()) + skew
    path = tmp_path / "token"
    sidecar.write_atomically(str(path), token(server_now, server_now + LIFETIME).encode())
    assert sidecar.valid_on_disk(str(path), time.time()) == server_now + LIFETIME
    written = path.stat().st_mtime
    os.utime(path, (written - LIFETIME, written - LIFETIME))  # written one lifetime ago: expired
    assert sidecar.valid_on_disk(str(path), time.time()) is None


def test_the_probe_never_reads_through_a_link(tmp_path: pathlib.Path) -> None:
    now = int(time.time())
    (tmp_path / "elsewhere").write_text(token(now, now + LIFETIME))
    (tmp_path / "token").symlink_to(tmp_path / "elsewhere")
    assert sidecar.valid_on_disk(str(tmp_path / "token"), time.time()) is None
