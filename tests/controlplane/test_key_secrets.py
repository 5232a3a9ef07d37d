"""Managed key sets against real Secrets: two replicas racing to create the Secret and to rotate
(real ``resourceVersion`` conflicts, one winner), and a successor held while the issuer does not
serve it. Each test has a namespace of its own; the replicas' clients are the admin. The store
counts its own write attempts (what tests/keys/test_managed_keys.py reads from the double's
request log). Outages, a corrupt Secret's writes and provided mode stay there on the double."""

from __future__ import annotations

import base64
import logging
import pathlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from tests.controlplane import cluster
from tests.keys.test_managed_keys import DAY, SECRET, Clock, endpoint


class CountingSecrets(keymanager.KubeSecrets):
    """The real store; counts its writes and, with a barrier, holds each until both replicas write."""

    def __init__(self, api: kubeapi.KubeAPI, barrier: threading.Barrier | None = None) -> None:
        super().__init__(api)
        self.barrier = barrier
        self.writes: list[str] = []

    def _hold(self, kind: str) -> None:
        self.writes.append(kind)
        if self.barrier is not None:
            self.barrier.wait(timeout=10)

    def create(self, namespace: str, name: str, data: bytes) -> str:
        self._hold("create")
        return super().create(namespace, name, data)

    def replace(self, namespace: str, name: str, data: bytes, resource_version: str) -> str:
        self._hold("replace")
        return super().replace(namespace, name, data, resource_version)


@pytest.fixture
def clients(control_plane: cluster.ControlPlane) -> Iterator[list[kubeapi.KubeAPI]]:
    made = [control_plane.admin_api() for _ in range(2)]
    yield made
    for client in made:
        client.close()


def stored(plane: cluster.ControlPlane, namespace: str) -> tuple[keyset.KeySet, str]:
    secret = plane.get("secret", SECRET, namespace)
    assert secret is not None
    data = base64.b64decode(secret["data"][keymanager.DATA_KEY])
    return keyset.loads(data), secret["metadata"]["resourceVersion"]


def replicas(
    clients: list[kubeapi.KubeAPI],
    namespace: str,
    tmp_path: pathlib.Path,
    clock: Clock,
    barrier: threading.Barrier | None = None,
) -> list[keymanager.KeyProvider]:
    return [
        keymanager.KeyProvider(
            endpoint(),
            namespace=namespace,
            path=tmp_path / f"replica-{i}" / "keyset.json",
            secrets=CountingSecrets(client, barrier),
            fetcher=None,
            clock=clock,
        )
        for i, client in enumerate(clients)
    ]


def writes(providers: list[keymanager.KeyProvider], kind: str) -> int:
    return sum(
        provider.secrets.writes.count(kind) for provider in providers if isinstance(provider.secrets, CountingSecrets)
    )


def refresh_together(providers: list[keymanager.KeyProvider]) -> None:
    threads = [threading.Thread(target=provider.refresh) for provider in providers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)


def test_racing_replicas_create_the_secret_once(
    control_plane: cluster.ControlPlane, namespace: str, clients: list[kubeapi.KubeAPI], tmp_path: pathlib.Path
) -> None:
    clock = Clock(1_000_000)
    providers = replicas(clients, namespace, tmp_path, clock, threading.Barrier(2))
    refresh_together(providers)
    assert writes(providers, "create") == 2  # both tried
    keys, _ = stored(control_plane, namespace)
    (only,) = keys.keys
    assert keys.endpoint == "aws"
    assert [provider.signing_key().kid for provider in providers] == [only.kid, only.kid]
    assert [provider.status()[0] for provider in providers] == [True, True]
    secret = control_plane.get("secret", SECRET, namespace)
    assert secret is not None
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "keys"


def test_racing_replicas_rotate_once(
    control_plane: cluster.ControlPlane,
    namespace: str,
    clients: list[kubeapi.KubeAPI],
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(1_000_000)
    first = replicas(clients, namespace, tmp_path, clock)
    first[0].refresh()
    first[1].refresh()
    (original,), version = stored(control_plane, namespace)[0].keys, stored(control_plane, namespace)[1]
    period = endpoint().issuer.keys.rotation_period
    clock.now = original.sign_until - DAY  # the successor is due now, for both replicas
    racing = replicas(clients, namespace, tmp_path, clock, threading.Barrier(2))
    with caplog.at_level(logging.INFO, logger="kube_sts.keys"):
        refresh_together(racing)
    assert writes(racing, "replace") == 2  # both tried
    assert "another replica rotated" in caplog.text
    keys, new_version = stored(control_plane, namespace)
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
    # The next pass changes nothing: no further writes, the stored Secret untouched.
    for provider in racing:
        provider.secrets = CountingSecrets(provider.secrets.api)  # type: ignore[union-attr]
        provider.refresh()
    assert writes(racing, "replace") == writes(racing, "create") == 0
    assert stored(control_plane, namespace)[1] == new_version


def test_managed_holding_extends_the_current_key_in_the_secret(
    control_plane: cluster.ControlPlane,
    namespace: str,
    admin_kube: kubeapi.KubeAPI,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    served: list[str] = []

    def fetch(url: str) -> Mapping[str, Any]:
        return {"keys": [{"kid": kid} for kid in served]}

    clock = Clock(1_000_000)
    provider = keymanager.KeyProvider(
        endpoint(wait=True),
        namespace=namespace,
        path=tmp_path / "keyset.json",
        secrets=keymanager.KubeSecrets(admin_kube),
        fetcher=fetch,
        clock=clock,
    )
    provider.refresh()  # creates the Secret; its key signs nothing until the issuer serves it
    (first,) = stored(control_plane, namespace)[0].keys
    with pytest.raises(keyset.KeySetError, match="not served by the issuer's JWKS yet"):
        provider.signing_key()
    served.append(first.kid)
    clock.now += keymanager.PUBLICATION_RETRY
    provider.refresh()
    assert provider.signing_key().kid == first.kid

    clock.now = first.sign_until - DAY
    provider.refresh()  # adds the successor
    successor = stored(control_plane, namespace)[0].keys[1]
    clock.now = first.sign_until - 900
    with caplog.at_level(logging.INFO, logger="kube_sts.keys"):
        for _ in range(30):  # an hour of passes every 121 s, the upload still missing
            provider.refresh()
            assert provider.signing_key().kid == first.kid
            clock.now += 121
    assert clock.now > successor.sign_from + 1800
    current = stored(control_plane, namespace)[0].get(first.kid)
    assert current is not None and current.sign_until > clock.now  # written to the Secret
    assert f"{successor.kid} not yet served by the issuer's JWKS" in caplog.text
    assert "held until https://d1.cloudfront.net/certs serves it" in caplog.text

    served.append(successor.kid)
    clock.now += keymanager.PUBLICATION_INTERVAL
    provider.refresh()
    assert provider.signing_key().kid == successor.kid
