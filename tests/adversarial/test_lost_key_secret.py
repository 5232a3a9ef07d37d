"""A managed key set Secret at the key handover with the API server failing (the double's 500s):
the served key keeps signing. The fault-free cases (the Secret deleted at run time, replicas
racing to recreate it, a new key held until the issuer serves it) run against real Secrets in
tests/controlplane/test_deleted_key_secret.py, which reuses the helpers here."""

from __future__ import annotations

import base64
import pathlib
from collections.abc import Mapping
from typing import Any

from harness import apiserver
from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi

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
