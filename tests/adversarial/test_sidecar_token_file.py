"""The sidecar's token file against planted links, short writes and file-size limits.

The token directory is shared with the application containers of the Pod, so a compromised
container can plant names in it; a file-size limit or a full volume can stop any write part way.
Either way the file named ``token`` holds the last good token and is never a link.
"""

from __future__ import annotations

import errno
import os
import pathlib
import resource
import signal
import subprocess
from typing import Any

import pytest

from harness import runtime as harness
from harness.token_service import TokenService, jwt
from kube_sts.runtime import sidecar
from tests.sidecar.test_sidecar import command, wait_for

GOOD = b"good-token-already-on-disk"
NEW = jwt(2_000_000_000, filler=600).encode()  # 868 bytes, as in the report


def test_a_link_planted_at_the_final_name_is_replaced_not_followed(tmp_path: pathlib.Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"the application's own file")
    (tmp_path / "out").mkdir()
    token = tmp_path / "out" / "token"
    token.symlink_to(victim)
    sidecar.write_atomically(str(token), NEW)
    assert victim.read_bytes() == b"the application's own file"
    assert not token.is_symlink() and token.read_bytes() == NEW
    assert os.listdir(token.parent) == ["token"]


def test_links_planted_at_temporary_names_are_never_followed(tmp_path: pathlib.Path, monkeypatch: Any) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"the application's own file")
    out = tmp_path / "out"
    out.mkdir()
    token = out / "token"
    token.write_bytes(GOOD)
    fixed = b"\x01" * 8
    drawn: list[int] = []
    real_urandom = os.urandom

    def urandom(size: int) -> bytes:  # the first name drawn is one an attacker guessed
        drawn.append(size)
        return fixed if len(drawn) == 1 else real_urandom(size)

    monkeypatch.setattr(os, "urandom", urandom)
    guessed = [f".token.{os.getpid()}.tmp", f".token.{fixed.hex()}.tmp"]
    for name in guessed:
        (out / name).symlink_to(victim)
    sidecar.write_atomically(str(token), NEW)
    assert victim.read_bytes() == b"the application's own file"
    assert token.read_bytes() == NEW and not token.is_symlink()
    assert sorted(os.listdir(out)) == sorted([*guessed, "token"])  # the planted links are left alone


def test_short_writes_are_resumed(tmp_path: pathlib.Path, monkeypatch: Any) -> None:
    real_write = os.write
    sizes: list[int] = []

    def write(descriptor: int, data: Any) -> int:
        sizes.append(real_write(descriptor, bytes(data)[:100]))
        return sizes[-1]

    monkeypatch.setattr(os, "write", write)
    token = tmp_path / "token"
    sidecar.write_atomically(str(token), NEW)
    assert token.read_bytes() == NEW and len(sizes) == 9


@pytest.mark.parametrize(
    "failure",
    [errno.EFBIG, errno.ENOSPC, errno.EIO, "short-then-zero", "fsync", "size"],
    ids=lambda failure: errno.errorcode.get(failure, failure),
)
def test_a_failed_write_keeps_the_existing_file(tmp_path: pathlib.Path, monkeypatch: Any, failure: Any) -> None:
    token = tmp_path / "token"
    token.write_bytes(GOOD)
    real_write = os.write
    calls: list[int] = []

    def write(descriptor: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(descriptor, bytes(data)[:300])  # the kernel stops at the limit
        if failure == "short-then-zero":
            return 0
        if isinstance(failure, int):
            raise OSError(failure, os.strerror(failure))
        return real_write(descriptor, bytes(data))

    def fsync(descriptor: int) -> None:
        raise OSError(errno.EIO, "fsync failed")

    real_fstat = os.fstat

    def fstat(descriptor: int) -> os.stat_result:
        result = real_fstat(descriptor)
        values = list(result)
        values[6] = result.st_size - 1
        return os.stat_result(values)

    monkeypatch.setattr(os, "write", write)
    if failure == "fsync":
        monkeypatch.setattr(os, "fsync", fsync)
    if failure == "size":
        monkeypatch.setattr(os, "fstat", fstat)
    with pytest.raises(OSError):
        sidecar.write_atomically(str(token), NEW)
    assert token.read_bytes() == GOOD
    assert os.listdir(tmp_path) == ["token"]


def test_a_file_size_limit_keeps_the_last_good_token(tmp_path: pathlib.Path) -> None:
    """A 300-byte RLIMIT_FSIZE imposed on the running sidecar: every write fails, the good token stays."""
    tls = harness.make_tls(tmp_path / "tls")
    service = TokenService(tls, lifetime=4)
    token = tmp_path / "out" / "token"
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        process = subprocess.Popen(command(service, tls, tmp_path), stderr=stderr)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        wait_for(token.exists, 15)
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (300, hard))
        good = token.read_bytes()
        calls = service.calls
        wait_for(lambda: service.calls >= calls + 2, 20)  # two refreshes answered, neither written
        assert process.poll() is None
        assert token.read_bytes() == good and len(good) > 300
        assert os.listdir(token.parent) == ["token"]
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        wait_for(lambda: token.read_bytes() != good, 20)
        assert sidecar.expiry(token.read_text()) is not None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
        service.close()
    assert "keeping the last token on disk" in log.read_text()
    assert process.returncode == 0
