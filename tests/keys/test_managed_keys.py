"""Managed key sets against the API server double: an outage keeps the last key set, a corrupt
Secret is never written, provided mode never writes (the double's request log shows it). Racing
replicas and holding run against real Secrets in tests/controlplane/test_key_secrets.py."""

from __future__ import annotations

import base64
import pathlib

from harness import apiserver
from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi

NAMESPACE = "kube-sts"
SECRET = "aws-keys"
SECRETS_PATH = f"/api/v1/namespaces/{NAMESPACE}/secrets"
DAY = 86400


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def endpoint(wait: bool = False, algorithm: str = "ES256") -> config.Endpoint:
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
            "token": {"algorithm": algorithm},
        }
    )


def stored(api_server: apiserver.APIServer) -> tuple[keyset.KeySet, str]:
    secret = api_server.get("v1", "secrets", NAMESPACE, SECRET)
    assert secret is not None
    data = base64.b64decode(secret["data"][keymanager.DATA_KEY])
    return keyset.loads(data), secret["metadata"]["resourceVersion"]


def test_outage_keeps_the_last_key_set_and_a_bad_secret_is_never_overwritten(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> None:
    clock = Clock(1_000_000)
    provider = keymanager.KeyProvider(
        endpoint(),
        namespace=NAMESPACE,
        path=tmp_path / "keyset.json",
        secrets=keymanager.KubeSecrets(kube),
        fetcher=None,
        clock=clock,
    )
    provider.refresh()
    kid = provider.signing_key().kid
    api_server.set_outage("error")
    provider.refresh()
    assert provider.signing_key().kid == kid
    api_server.set_outage(None)

    secret = api_server.get("v1", "secrets", NAMESPACE, SECRET)
    assert secret is not None
    secret["data"][keymanager.DATA_KEY] = base64.b64encode(b'{"version": 1, "keys": [').decode()
    api_server.put(secret)
    other = keymanager.KeyProvider(
        endpoint(),
        namespace=NAMESPACE,
        path=tmp_path / "missing.json",
        secrets=keymanager.KubeSecrets(kube),
        fetcher=None,
        clock=clock,
    )
    writes = len(api_server.requests_to(SECRETS_PATH, "PUT"))
    other.refresh()
    ready, reason = other.status()
    assert not ready
    assert f"Secret {NAMESPACE}/{SECRET}: not a key set: corrupt or truncated JSON" in reason
    clock.now += 40 * DAY  # rotation would be due, but an unreadable key set is left alone
    other.refresh()
    assert len(api_server.requests_to(SECRETS_PATH, "PUT")) == writes


def test_provided_mode_never_writes(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> None:
    provided = endpoint().model_copy(
        update={"issuer": endpoint().issuer.model_copy(update={"keys": config.KeyManagement(mode="provided")})}
    )
    provider = keymanager.KeyProvider(
        provided,
        namespace=NAMESPACE,
        path=tmp_path / "keyset.json",
        secrets=keymanager.KubeSecrets(kube),
        fetcher=None,
        clock=Clock(1_000_000),
    )
    provider.refresh()
    assert not provider.status()[0]
    assert api_server.requests == []
