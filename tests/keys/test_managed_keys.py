"""Managed key sets against the API server double: creation, racing replicas, holding, outages."""

from __future__ import annotations

import base64
import logging
import pathlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from tests import apiserver

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


class RacingSecrets(keymanager.KubeSecrets):
    """The real store, with every write held until both replicas are about to write."""

    def __init__(self, api: kubeapi.KubeAPI, barrier: threading.Barrier) -> None:
        super().__init__(api)
        self.barrier = barrier

    def create(self, namespace: str, name: str, data: bytes) -> str:
        self.barrier.wait(timeout=10)
        return super().create(namespace, name, data)

    def replace(self, namespace: str, name: str, data: bytes, resource_version: str) -> str:
        self.barrier.wait(timeout=10)
        return super().replace(namespace, name, data, resource_version)


@pytest.fixture
def clients(api_server: apiserver.APIServer) -> Iterator[list[kubeapi.KubeAPI]]:
    made = [kubeapi.KubeAPI.for_host(api_server.url, token=f"replica-{i}", timeout=2.0) for i in range(2)]
    yield made
    for client in made:
        client.close()


def stored(api_server: apiserver.APIServer) -> tuple[keyset.KeySet, str]:
    secret = api_server.get("v1", "secrets", NAMESPACE, SECRET)
    assert secret is not None
    data = base64.b64decode(secret["data"][keymanager.DATA_KEY])
    return keyset.loads(data), secret["metadata"]["resourceVersion"]


def replicas(
    clients: list[kubeapi.KubeAPI], tmp_path: pathlib.Path, clock: Clock, barrier: threading.Barrier | None = None
) -> list[keymanager.KeyProvider]:
    return [
        keymanager.KeyProvider(
            endpoint(),
            namespace=NAMESPACE,
            path=tmp_path / f"replica-{i}" / "keyset.json",
            secrets=RacingSecrets(client, barrier) if barrier else keymanager.KubeSecrets(client),
            fetcher=None,
            clock=clock,
        )
        for i, client in enumerate(clients)
    ]


def refresh_together(providers: list[keymanager.KeyProvider]) -> None:
    threads = [threading.Thread(target=provider.refresh) for provider in providers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)


def test_racing_replicas_create_the_secret_once(
    api_server: apiserver.APIServer, clients: list[kubeapi.KubeAPI], tmp_path: pathlib.Path
) -> None:
    clock = Clock(1_000_000)
    providers = replicas(clients, tmp_path, clock, threading.Barrier(2))
    refresh_together(providers)
    assert len(api_server.requests_to(SECRETS_PATH, "POST")) == 2  # both tried
    keys, _ = stored(api_server)
    (only,) = keys.keys
    assert keys.endpoint == "aws"
    assert [provider.signing_key().kid for provider in providers] == [only.kid, only.kid]
    assert [provider.status()[0] for provider in providers] == [True, True]
    secret = api_server.get("v1", "secrets", NAMESPACE, SECRET)
    assert secret is not None
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "keys"


def test_racing_replicas_rotate_once(
    api_server: apiserver.APIServer,
    clients: list[kubeapi.KubeAPI],
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(1_000_000)
    first = replicas(clients, tmp_path, clock)
    first[0].refresh()
    first[1].refresh()
    (original,), version = stored(api_server)[0].keys, stored(api_server)[1]
    period = endpoint().issuer.keys.rotation_period
    clock.now = original.sign_until - DAY  # the successor is due now, for both replicas
    racing = replicas(clients, tmp_path, clock, threading.Barrier(2))
    with caplog.at_level(logging.INFO, logger="kube_sts.keys"):
        refresh_together(racing)
    assert len(api_server.requests_to(SECRETS_PATH + "/" + SECRET, "PUT")) == 2  # both tried
    assert "another replica rotated" in caplog.text
    keys, new_version = stored(api_server)
    assert int(new_version) > int(version)
    assert keys.keys[0].kid == original.kid
    assert len(keys.keys) == 2  # exactly one successor: the loser's key was dropped
    successor = keys.keys[1]
    assert successor.sign_from == original.sign_until
    assert successor.sign_until == original.sign_until + period
    for provider in racing:
        assert [key.kid for key in provider.published()] == [original.kid, successor.kid]
        assert provider.signing_key().kid == original.kid
    clock.now = successor.sign_from
    assert {provider.signing_key().kid for provider in racing} == {successor.kid}
    # The next pass changes nothing: no further writes.
    for provider in racing:
        provider.secrets = keymanager.KubeSecrets(provider.secrets.api)  # type: ignore[union-attr]
        provider.refresh()
    assert len(api_server.requests_to(SECRETS_PATH + "/" + SECRET, "PUT")) == 2


def test_managed_holding_extends_the_current_key_in_the_secret(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    served: list[str] = []

    def fetch(url: str) -> Mapping[str, Any]:
        return {"keys": [{"kid": kid} for kid in served]}

    clock = Clock(1_000_000)
    provider = keymanager.KeyProvider(
        endpoint(wait=True),
        namespace=NAMESPACE,
        path=tmp_path / "keyset.json",
        secrets=keymanager.KubeSecrets(kube),
        fetcher=fetch,
        clock=clock,
    )
    provider.refresh()  # creates the Secret; its key signs nothing until the issuer serves it
    (first,) = stored(api_server)[0].keys
    with pytest.raises(keyset.KeySetError, match="not served by the issuer's JWKS yet"):
        provider.signing_key()
    served.append(first.kid)
    clock.now += keymanager.PUBLICATION_RETRY
    provider.refresh()
    assert provider.signing_key().kid == first.kid

    clock.now = first.sign_until - DAY
    provider.refresh()  # adds the successor
    successor = stored(api_server)[0].keys[1]
    clock.now = first.sign_until - 900
    with caplog.at_level(logging.INFO, logger="kube_sts.keys"):
        for _ in range(30):  # an hour of passes every 121 s, the upload still missing
            provider.refresh()
            assert provider.signing_key().kid == first.kid
            clock.now += 121
    assert clock.now > successor.sign_from + 1800
    current = stored(api_server)[0].get(first.kid)
    assert current is not None and current.sign_until > clock.now  # written to the Secret
    assert f"{successor.kid} not yet served by the issuer's JWKS" in caplog.text
    assert "held until https://d1.cloudfront.net/certs serves it" in caplog.text

    served.append(successor.kid)
    clock.now += keymanager.PUBLICATION_INTERVAL
    provider.refresh()
    assert provider.signing_key().kid == successor.kid


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
