"""``kube-sts-sidecar`` as a process against a local HTTPS token service with short-lived tokens."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness import runtime as harness
from harness.token_service import SA_TOKEN, TokenService, jwt
from kube_sts.runtime import sidecar


@pytest.fixture
def tls(tmp_path: pathlib.Path) -> harness.TLSFiles:
    return harness.make_tls(tmp_path / "tls")


@pytest.fixture
def service(tls: harness.TLSFiles) -> Iterator[TokenService]:
    double = TokenService(tls, lifetime=4)
    yield double
    double.close()


def command(service: TokenService, tls: harness.TLSFiles, tmp_path: pathlib.Path, *extra: str) -> list[str]:
    sa = tmp_path / "sa-token"
    sa.write_text(SA_TOKEN + "\n")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return [
        sys.executable,
        "-m",
        "kube_sts.runtime.sidecar",
        "--url",
        service.url,
        "--service-account-token",
        str(sa),
        "--token-file",
        str(out / "token"),
        "--ca-file",
        str(tls.ca),
        "--max-backoff",
        "2",
        *extra,
    ]


def wait_for(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_once_writes_a_readable_token(service: TokenService, tls: harness.TLSFiles, tmp_path: pathlib.Path) -> None:
    result = subprocess.run(command(service, tls, tmp_path, "--once"), check=False, timeout=30, capture_output=True)
    assert result.returncode == 0, result.stderr
    token_file = tmp_path / "out" / "token"
    assert token_file.stat().st_mode & 0o777 == 0o644
    assert sidecar.valid_on_disk(str(token_file), time.time(), margin=0) is not None
    assert service.bearers == [f"Bearer {SA_TOKEN}"]
    assert [p.name for p in token_file.parent.iterdir()] == ["token"]  # no temporary file left
    check = [sys.executable, "-m", "kube_sts.runtime.sidecar", "--check", "--token-file", str(token_file)]
    assert subprocess.run(check, check=False, timeout=30).returncode == 1  # within the 10 s margin
    token_file.write_text(jwt(int(time.time()) + 60))
    assert subprocess.run(check, check=False, timeout=30).returncode == 0


def test_untrusted_certificate_is_refused(service: TokenService, tmp_path: pathlib.Path) -> None:
    other = harness.make_tls(tmp_path / "other")
    result = subprocess.run(
        command(service, other, tmp_path, "--once", "--max-backoff", "0.2"),
        check=False,
        timeout=60,
        capture_output=True,
    )
    assert result.returncode == 1 and service.calls == 0
    assert not (tmp_path / "out" / "token").exists()


def test_refresh_backoff_keep_last_good_and_sigterm(
    service: TokenService, tls: harness.TLSFiles, tmp_path: pathlib.Path
) -> None:
    token_file = tmp_path / "out" / "token"
    process = subprocess.Popen(command(service, tls, tmp_path), stderr=subprocess.PIPE, text=True)
    torn: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                text = token_file.read_text()
            except FileNotFoundError:
                continue
            if sidecar.expiry(text) is None:
                torn.append(text[:40])
            seen.add(text)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        wait_for(lambda: len(seen) >= 3, 15)  # lifetime 4 s, refresh at half: several rewrites
        service.failing = True
        calls = service.calls
        last = token_file.read_text()
        time.sleep(3.5)
        # bounded backoff: 1 s, 2 s (the cap) -> only a few attempts; the last good token stays
        assert 1 <= service.calls - calls <= 4
        assert token_file.read_text() == last
        service.failing = False
        wait_for(lambda: token_file.read_text() != last, 10)
        assert process.poll() is None
    finally:
        stop.set()
        thread.join()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert torn == []
    assert SA_TOKEN not in stderr and not any(token in stderr for token in seen)
    assert sorted(os.listdir(token_file.parent)) == ["token"]


def test_expiry_reads_only_well_formed_tokens() -> None:
    assert sidecar.expiry(jwt(123, filler=1)) == 123
    assert sidecar.expiry("garbage") is None
    assert sidecar.expiry("a.!!!.c") is None
    assert sidecar.expiry(jwt(1)[:30]) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"type": "external_account"}', None),
        ("not json", "holds no JSON"),
        ("[1]", "holds no JSON object"),
    ],
)
def test_credential_configuration_is_written_beside_the_token(
    service: TokenService, tls: harness.TLSFiles, tmp_path: pathlib.Path, value: str, message: str | None
) -> None:
    target = tmp_path / "out" / "credential-configuration.json"
    extra = ("--once", "--credential-config", str(target), "--credential-config-env", "CONFIG")
    result = subprocess.run(
        command(service, tls, tmp_path, *extra),
        check=False,
        timeout=30,
        capture_output=True,
        text=True,
        env={**os.environ, "CONFIG": value},
    )
    if message is None:
        assert result.returncode == 0, result.stderr
        assert json.loads(target.read_text()) == {"type": "external_account"}
        assert target.stat().st_mode & 0o777 == 0o644
        assert sorted(p.name for p in target.parent.iterdir()) == ["credential-configuration.json", "token"]
    else:
        assert result.returncode == 1 and not target.exists()
        assert result.stderr == (f"kube-sts-sidecar: error: variable CONFIG (--credential-config-env) {message}\n")
        assert service.bearers == []  # refused at start-up, before any exchange
