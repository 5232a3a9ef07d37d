"""Key providers reading mounted key set files: reload, bad files, waiting for publication."""

from __future__ import annotations

import io
import logging
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import pytest

from kube_sts.compiler import keys as keys_cli
from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset, rotation
from kube_sts.runtime.keys import manager as keymanager


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def endpoint(mode: str = "provided", wait: bool = True) -> config.Endpoint:
    return config.Endpoint.model_validate(
        {
            "name": "aws",
            "audience": "sts.aws.com",
            "path": "/aws",
            "issuer": {
                "host": "d1.cloudfront.net",
                "keypair": "aws-keys",
                "keys": {"mode": mode, "waitForPublication": wait},
            },
        }
    )


def write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Swap the file the way the kubelet updates a mounted Secret (write elsewhere, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(".tmp-" + path.name)
    temporary.write_bytes(data)
    os.replace(temporary, path)


@pytest.fixture(scope="module")
def keys() -> tuple[keyset.Key, keyset.Key]:
    old = keyset.generate("ES256", created=0, sign_from=0, sign_until=10_000_000)
    new = keyset.generate("ES256", created=5000, sign_from=8000, sign_until=20_000_000)
    return old, new


def test_reloads_a_changed_file_without_restart(tmp_path: pathlib.Path, keys: tuple[keyset.Key, keyset.Key]) -> None:
    old, new = keys
    path = tmp_path / "aws" / "keyset.json"
    write_atomically(path, keyset.dumps(keyset.KeySet((old,))))
    runtime = config.RuntimeConfig.model_validate(
        {
            "cluster": "c",
            "namespace": "kube-sts",
            "serviceUrl": "https://kube-sts.kube-sts.svc",
            "stsAudience": "kube-sts",
            "sidecarImage": "img",
            "sidecarResources": {},
            "tls": {"secretName": "tls", "dnsNames": ["kube-sts.kube-sts.svc"]},
            "endpoints": [endpoint(wait=False).model_dump(by_alias=True)],
        }
    )
    clock = Clock(9000)
    manager = keymanager.KeyManager.from_config(runtime, keys_dir=tmp_path, fetcher=None, clock=clock, interval=0.02)
    manager.start()
    try:
        provider = manager.provider("aws")
        assert provider.signing_key().kid == old.kid
        write_atomically(path, keyset.dumps(keyset.KeySet((old, new))))
        deadline = time.monotonic() + 5
        while provider.signing_key().kid != new.kid and time.monotonic() < deadline:
            time.sleep(0.01)
        assert provider.signing_key().kid == new.kid
        assert [jwk["kid"] for jwk in provider.jwks()["keys"]] == [old.kid, new.kid]
        assert manager.status() == (True, (f"endpoint aws: signing with {new.kid}",))
    finally:
        manager.stop()


def test_bad_or_missing_file_is_not_ready_with_the_reason(
    tmp_path: pathlib.Path, keys: tuple[keyset.Key, keyset.Key], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keyset.json"
    provider = keymanager.KeyProvider(endpoint(), namespace="ns", path=path, fetcher=None, clock=Clock(100))
    provider.refresh()
    ready, reason = provider.status()
    assert not ready
    assert f"key set file {path} is missing; create Secret aws-keys with `sts-compile keys secret`" in reason
    with pytest.raises(keyset.KeySetError):
        provider.signing_key()
    assert provider.jwks() == {"keys": []}

    good = keyset.dumps(keyset.KeySet((keys[0],)))
    write_atomically(path, good[: len(good) // 3])
    with caplog.at_level(logging.ERROR, logger="kube_sts.keys"):
        provider.refresh()
    ready, reason = provider.status()
    assert not ready
    assert "corrupt or truncated JSON" in reason
    assert "corrupt or truncated JSON" in caplog.text

    write_atomically(path, good)
    provider.refresh()
    assert provider.status() == (True, f"endpoint aws: signing with {keys[0].kid}")

    # A later bad write keeps the last good key set signing and says why.
    write_atomically(path, b'{"version": 1, "keys": [{"alg": "HS256"}]}')
    provider.refresh()
    ready, reason = provider.status()
    assert ready
    assert "last reload failed" in reason
    assert provider.signing_key().kid == keys[0].kid


def test_no_key_able_to_sign_now_is_not_ready(tmp_path: pathlib.Path, keys: tuple[keyset.Key, keyset.Key]) -> None:
    path = tmp_path / "keyset.json"
    write_atomically(path, keyset.dumps(keyset.KeySet((keys[1],))))
    provider = keymanager.KeyProvider(endpoint(), namespace="ns", path=path, fetcher=None, clock=Clock(100))
    provider.refresh()
    ready, reason = provider.status()
    assert not ready
    assert reason == f"endpoint aws: no key can sign at 100: the next key {keys[1].kid} signs from 8000"


class Issuer:
    """The public JWKS at the issuer URL, as a fetcher sees it."""

    def __init__(self) -> None:
        self.kids: list[str] = []
        self.fetched: list[str] = []
        self.down = False

    def __call__(self, url: str) -> Mapping[str, Any]:
        self.fetched.append(url)
        if self.down:
            raise OSError("connection refused")
        return {"keys": [{"kid": kid, "kty": "EC"} for kid in self.kids]}


def test_waits_for_publication_before_activating_a_new_key(
    tmp_path: pathlib.Path, keys: tuple[keyset.Key, keyset.Key], caplog: pytest.LogCaptureFixture
) -> None:
    old, new = keys
    path = tmp_path / "keyset.json"
    write_atomically(path, keyset.dumps(keyset.KeySet((old, new))))
    issuer = Issuer()
    issuer.kids = [old.kid]
    clock = Clock(9000)
    provider = keymanager.KeyProvider(endpoint(), namespace="ns", path=path, fetcher=issuer, clock=clock)
    with caplog.at_level(logging.INFO, logger="kube_sts.keys"):
        provider.refresh()
    assert issuer.fetched == ["https://d1.cloudfront.net/certs"]
    assert provider.signing_key().kid == old.kid  # new is due, but not served yet
    assert f"{new.kid} held until https://d1.cloudfront.net/certs serves it" in caplog.text
    assert [jwk["kid"] for jwk in provider.jwks()["keys"]] == [old.kid, new.kid]

    issuer.kids = [old.kid, new.kid]
    clock.now += 10
    provider.refresh()
    assert len(issuer.fetched) == 1  # fetched at most once a minute
    assert provider.signing_key().kid == old.kid

    issuer.down = True
    clock.now += keymanager.PUBLICATION_INTERVAL
    provider.refresh()
    assert provider.signing_key().kid == old.kid  # an unreachable issuer keeps the key held

    issuer.down = False
    clock.now += keymanager.PUBLICATION_INTERVAL
    provider.refresh()
    assert len(issuer.fetched) == 3
    assert provider.signing_key().kid == new.kid
    clock.now += keymanager.PUBLICATION_INTERVAL
    provider.refresh()
    assert len(issuer.fetched) == 3  # nothing left to check


def test_first_deployment_signs_nothing_until_the_issuer_serves_the_key(
    tmp_path: pathlib.Path, keys: tuple[keyset.Key, keyset.Key], caplog: pytest.LogCaptureFixture
) -> None:
    # First deployment: nothing is published yet. The replica stays ready (the Service must keep
    # serving /aws/issuer-docs, the documents whose upload ends the wait, and the webhook), says
    # why on /readyz and in the log, and refuses to sign until the issuer serves the key.
    path = tmp_path / "keyset.json"
    write_atomically(path, keyset.dumps(keyset.KeySet((keys[0],))))
    issuer = Issuer()
    clock = Clock(50)
    provider = keymanager.KeyProvider(endpoint(), namespace="ns", path=path, fetcher=issuer, clock=clock)
    with caplog.at_level(logging.WARNING, logger="kube_sts.keys"):
        provider.refresh()
    with pytest.raises(keyset.KeySetError, match=f"{keys[0].kid} is not served by the issuer's JWKS yet"):
        provider.signing_key()
    ready, reason = provider.status()
    assert ready
    assert f"signs no token until https://d1.cloudfront.net/certs serves {keys[0].kid}" in reason
    assert "503 no_signing_key" in reason
    assert reason in caplog.text
    assert [jwk["kid"] for jwk in provider.jwks()["keys"]] == [keys[0].kid]  # the documents to upload

    # While nothing can sign the issuer is asked on every pass, not once a minute.
    issuer.kids = [keys[0].kid]
    clock.now += keymanager.PUBLICATION_RETRY
    provider.refresh()
    assert len(issuer.fetched) == 2
    assert provider.signing_key().kid == keys[0].kid
    assert provider.status() == (True, f"endpoint aws: signing with {keys[0].kid}")


def test_fetch_jwks_refuses_plain_http() -> None:
    with pytest.raises(ValueError, match="only https"):
        keymanager.fetch_jwks("http://d1.cloudfront.net/certs")


def test_provided_key_set_about_to_run_out_warns(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keyset.json"
    short = keyset.generate("ES256", created=0, sign_from=0, sign_until=10_000)
    write_atomically(path, keyset.dumps(keyset.KeySet((short,))))
    clock = Clock(100)
    provider = keymanager.KeyProvider(endpoint(), namespace="ns", path=path, fetcher=None, clock=clock)
    with caplog.at_level(logging.WARNING, logger="kube_sts.keys"):
        provider.refresh()
    ready, reason = provider.status()
    assert ready
    assert reason.endswith("no key signs after 10000 (in 2h): add one with `sts-compile keys add`")
    assert "add one with `sts-compile keys add`" in caplog.text


# -- provided key sets: a forgotten upload delays the rotation, it never breaks workloads ------------

T0 = 1_800_000_000
DAY = 86400
RETENTION = 3600 + keyset.CLOCK_SKEW  # the default token lifetime plus skew


def cli(*argv: str) -> None:
    err = io.StringIO()
    assert keys_cli.main(list(argv), io.StringIO(), err) == 0, err.getvalue()


@pytest.fixture
def rotated(tmp_path: pathlib.Path) -> tuple[pathlib.Path, keyset.Key, keyset.Key]:
    """The README's provided-mode rotation: `keys create`, then a day later `keys add --lead 1d`."""
    path = tmp_path / "keyset.json"
    cli("keys", "create", "--endpoint", "aws", "--algorithm", "ES256", "-o", str(path), "--now", str(T0))
    cli("keys", "add", str(path), "--lead", "1d", "--now", str(T0 + DAY))
    old, new = keyset.loads(path.read_bytes()).keys
    assert (new.sign_from, old.sign_until) == (T0 + 2 * DAY, T0 + 3 * DAY)
    return path, old, new


def test_a_forgotten_upload_keeps_the_published_key_signing(
    rotated: tuple[pathlib.Path, keyset.Key, keyset.Key], caplog: pytest.LogCaptureFixture
) -> None:
    path, old, new = rotated
    issuer = Issuer()
    issuer.kids = [old.kid]  # the upload after `keys add` never happened
    clock = Clock(T0 + 3 * DAY + 1)  # past the old key's signUntil
    provider = keymanager.KeyProvider(endpoint(), namespace="ns", path=path, fetcher=issuer, clock=clock)
    with caplog.at_level(logging.WARNING, logger="kube_sts.keys"):
        provider.refresh()
    assert provider.signing_key().kid == old.kid
    ready, reason = provider.status()
    assert ready
    assert reason == (
        f"endpoint aws: signing with {old.kid} past its signUntil {T0 + 3 * DAY}: {new.kid} not served by "
        "https://d1.cloudfront.net/certs yet, upload the issuer documents (sts-compile issuer-docs)"
    )
    assert reason in caplog.text

    for _ in range(30):  # a month later, refreshed all along
        clock.now += DAY
        provider.refresh()
        assert provider.signing_key().kid == old.kid
        assert old.kid in [jwk["kid"] for jwk in provider.jwks()["keys"]]

    issuer.kids = [old.kid, new.kid]  # the upload, at last
    clock.now += keymanager.PUBLICATION_INTERVAL
    provider.refresh()
    assert provider.signing_key().kid == new.kid
    assert provider.status() == (True, f"endpoint aws: signing with {new.kid}")
    last_signed = clock.now
    clock.now = last_signed + RETENTION - 1
    provider.refresh()
    assert old.kid in [jwk["kid"] for jwk in provider.jwks()["keys"]]  # its last tokens still verify
    clock.now = last_signed + rotation.HOLD_STEP + RETENTION
    provider.refresh()
    assert [jwk["kid"] for jwk in provider.jwks()["keys"]] == [new.kid]


def test_a_restarted_replica_keeps_the_same_key_signing(rotated: tuple[pathlib.Path, keyset.Key, keyset.Key]) -> None:
    path, old, new = rotated
    issuer = Issuer()
    issuer.kids = [old.kid]
    moment = T0 + 40 * DAY  # long past the old key's window and retention in the file
    provider = keymanager.KeyProvider(endpoint(), namespace="ns", path=path, fetcher=issuer, clock=Clock(moment))
    provider.refresh()
    assert provider.signing_key().kid == old.kid
    assert [jwk["kid"] for jwk in provider.jwks()["keys"]] == [old.kid, new.kid]


def test_without_waiting_the_schedule_decides(rotated: tuple[pathlib.Path, keyset.Key, keyset.Key]) -> None:
    path, old, new = rotated
    issuer = Issuer()
    issuer.kids = [old.kid]
    provider = keymanager.KeyProvider(
        endpoint(wait=False), namespace="ns", path=path, fetcher=issuer, clock=Clock(T0 + 3 * DAY + 1)
    )
    provider.refresh()
    assert provider.signing_key().kid == new.kid
    assert issuer.fetched == []


def test_a_removed_leaked_key_is_not_replaced_by_an_older_retired_one(tmp_path: pathlib.Path) -> None:
    """After the leak procedure a key retired long before (still in the file, still served) is
    never brought back; the replacement signs once the issuer serves it, and nothing signs before
    (with waitForPublication no token is signed by a key the issuer does not serve)."""
    path = tmp_path / "keyset.json"
    cli("keys", "create", "--endpoint", "aws", "--algorithm", "ES256", "-o", str(path), "--now", str(T0))
    cli("keys", "add", str(path), "--lead", "1d", "--now", str(T0 + DAY))
    retired, leaked = keyset.loads(path.read_bytes()).keys
    moment = T0 + 3 * DAY + 10  # `retired` stopped signing at T0 + 3d; `leaked` signs
    cli("keys", "add", str(path), "--lead", "0", "--now", str(moment))
    cli("keys", "retire", leaked.kid, str(path), "--remove", "--now", str(moment))
    replacement = keyset.loads(path.read_bytes()).keys[-1]
    issuer = Issuer()
    issuer.kids = [retired.kid, leaked.kid]
    clock = Clock(moment)
    provider = keymanager.KeyProvider(endpoint(), namespace="ns", path=path, fetcher=issuer, clock=clock)
    provider.refresh()
    with pytest.raises(keyset.KeySetError, match="not served"):
        provider.signing_key()
    issuer.kids = [retired.kid, replacement.kid]  # the documents are uploaded
    clock.now += keymanager.PUBLICATION_INTERVAL
    provider.refresh()
    assert provider.signing_key().kid == replacement.kid
