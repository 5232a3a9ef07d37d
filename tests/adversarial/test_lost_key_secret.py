"""A managed key set Secret deleted at run time, with waitForPublication: no token is ever signed
by a key the issuer does not serve, and the keys still published come back into the Secret."""

from __future__ import annotations

import base64
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import pytest

from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from tests import apiserver

NAMESPACE = "kube-sts"
SECRET = "aws-keys"
DAY = 86400


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Issuer:
    """The externally hosted JWKS: serves what was uploaded last, nothing before."""

    def __init__(self) -> None:
        self.kids: set[str] = set()

    def __call__(self, url: str) -> Mapping[str, Any]:
        return {"keys": [{"kid": kid, "kty": "EC"} for kid in sorted(self.kids)]}

    def upload(self, provider: keymanager.KeyProvider) -> None:
        self.kids = {jwk["kid"] for jwk in provider.jwks()["keys"]}


def managed(wait: bool = True) -> config.Endpoint:
    return config.Endpoint.model_validate(
        {
            "name": "aws",
            "audience": "sts.aws.com",
            "path": "/aws",
            "issuer": {
                "host": "d1.cloudfront.net",
                "keypair": SECRET,
                "keys": {"mode": "managed", "waitForPublication": wait},
            },
            "token": {"algorithm": "ES256"},
        }
    )


def replica(kube: kubeapi.KubeAPI, tmp_path: pathlib.Path, issuer: Issuer, clock: Clock) -> keymanager.KeyProvider:
    return keymanager.KeyProvider(
        managed(),
        namespace=NAMESPACE,
        path=tmp_path / "absent" / "keyset.json",
        secrets=keymanager.KubeSecrets(kube),
        fetcher=issuer,
        clock=clock,
    )


def stored_kids(api_server: apiserver.APIServer) -> list[str]:
    secret = api_server.get("v1", "secrets", NAMESPACE, SECRET)
    assert secret is not None
    return [key.kid for key in keyset.loads(base64.b64decode(secret["data"][keymanager.DATA_KEY])).keys]


def signer(provider: keymanager.KeyProvider, issuer: Issuer) -> str | None:
    """The kid the token service would sign with now (None: it refuses); never one not served."""
    try:
        kid = provider.signing_key().kid
    except keyset.KeySetError:
        return None
    assert kid in issuer.kids, f"signed with {kid}, which the issuer does not serve"
    return kid


def test_deleted_secret_is_recreated_with_the_published_keys(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, issuer = Clock(1_000_000), Issuer()
    provider = replica(kube, tmp_path, issuer, clock)
    provider.refresh()
    issuer.upload(provider)
    clock.now += keymanager.PUBLICATION_RETRY
    provider.refresh()
    (first,) = stored_kids(api_server)
    assert signer(provider, issuer) == first

    # A successor is due and published; then the Secret is deleted by hand.
    clock.now += managed().issuer.keys.rotation_period - DAY
    provider.refresh()
    issuer.upload(provider)
    published = stored_kids(api_server)
    assert len(published) == 2
    api_server.delete("v1", "secrets", NAMESPACE, SECRET)
    clock.now += 15
    with caplog.at_level(logging.WARNING, logger="kube_sts.keys"):
        provider.refresh()

    assert stored_kids(api_server) == published  # the same keys, no new one
    assert "had disappeared; recreated it with the keys still published" in caplog.text
    assert [jwk["kid"] for jwk in provider.jwks()["keys"]] == published
    assert signer(provider, issuer) == first  # the current key keeps signing
    assert provider.status() == (True, f"endpoint aws: signing with {first}")

    # Another replica starting now loads the recreated set, and the schedule goes on with it.
    other = replica(kube, tmp_path, issuer, clock)
    other.refresh()
    assert signer(other, issuer) == first
    clock.now += DAY
    for each in (provider, other):
        each.refresh()
        assert signer(each, issuer) == published[1]
    assert stored_kids(api_server) == published


def test_replicas_racing_to_recreate_write_the_same_keys_once(
    api_server: apiserver.APIServer, tmp_path: pathlib.Path
) -> None:
    clock, issuer = Clock(1_000_000), Issuer()
    clients = [kubeapi.KubeAPI.for_host(api_server.url, token=f"replica-{i}", timeout=2.0) for i in range(2)]
    try:
        providers = [replica(client, tmp_path, issuer, clock) for client in clients]
        for provider in providers:
            provider.refresh()
        issuer.upload(providers[0])
        clock.now += keymanager.PUBLICATION_RETRY
        (kid,) = stored_kids(api_server)
        api_server.delete("v1", "secrets", NAMESPACE, SECRET)
        for provider in providers:
            provider.refresh()
        assert stored_kids(api_server) == [kid]
        assert [signer(provider, issuer) for provider in providers] == [kid, kid]
    finally:
        for client in clients:
            client.close()


def test_without_the_keys_in_memory_a_new_key_never_signs_before_the_issuer_serves_it(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> None:
    # The Secret was lost while no replica ran: the only way out is a new key and an upload.
    # Until the issuer serves it, the token service refuses (503) instead of signing tokens that
    # every relying party rejects; the replica stays in the Service so that /aws/issuer-docs can
    # be fetched and uploaded.
    clock, issuer = Clock(1_000_000), Issuer()
    issuer.kids = {"an-old-key-whose-private-half-is-gone"}
    provider = replica(kube, tmp_path, issuer, clock)
    for _ in range(3):
        provider.refresh()
        assert signer(provider, issuer) is None
        clock.now += 15
    (new,) = stored_kids(api_server)
    ready, reason = provider.status()
    assert ready
    assert f"signs no token until https://d1.cloudfront.net/certs serves {new}" in reason
    issuer.upload(provider)
    clock.now += keymanager.PUBLICATION_RETRY
    provider.refresh()
    assert signer(provider, issuer) == new


def test_an_api_outage_at_the_handover_keeps_the_served_key_signing(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> None:
    # The successor is due but not uploaded, and the API server is down, so the extension of the
    # current key cannot be written: the replica extends it in memory rather than refuse tokens.
    clock, issuer = Clock(1_000_000), Issuer()
    provider = replica(kube, tmp_path, issuer, clock)
    provider.refresh()
    issuer.upload(provider)
    clock.now += keymanager.PUBLICATION_RETRY
    provider.refresh()
    (first,) = stored_kids(api_server)
    clock.now += managed().issuer.keys.rotation_period - DAY
    provider.refresh()  # the successor is added (published in /aws/issuer-docs, not uploaded)
    successor = stored_kids(api_server)[1]
    api_server.set_outage("error")
    clock.now += DAY - 900
    for _ in range(30):  # an hour of passes, across the successor's signFrom
        provider.refresh()
        assert signer(provider, issuer) == first
        clock.now += 121
    assert provider.status()[0]
    api_server.set_outage(None)
    provider.refresh()
    assert signer(provider, issuer) == first
    issuer.upload(provider)
    clock.now += keymanager.PUBLICATION_INTERVAL
    provider.refresh()
    assert signer(provider, issuer) == successor
