"""A managed key set Secret deleted at run time, against real Secrets: no token is ever signed by
a key the issuer does not serve, and the keys still published come back into the Secret. Each
test has a namespace of its own; the replicas' clients are the admin. The API outage at the key
handover stays on the double (tests/adversarial/test_lost_key_secret.py)."""

from __future__ import annotations

import base64
import logging
import pathlib
from collections.abc import Iterator

import pytest

from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from tests.adversarial.test_lost_key_secret import DAY, SECRET, Clock, Issuer, managed, signer
from tests.controlplane import cluster


@pytest.fixture
def clients(control_plane: cluster.ControlPlane) -> Iterator[list[kubeapi.KubeAPI]]:
    made = [control_plane.admin_api() for _ in range(2)]
    yield made
    for client in made:
        client.close()


def replica(
    kube: kubeapi.KubeAPI, namespace: str, tmp_path: pathlib.Path, issuer: Issuer, clock: Clock
) -> keymanager.KeyProvider:
    return keymanager.KeyProvider(
        managed(),
        namespace=namespace,
        path=tmp_path / "absent" / "keyset.json",
        secrets=keymanager.KubeSecrets(kube),
        fetcher=issuer,
        clock=clock,
    )


def stored_kids(plane: cluster.ControlPlane, namespace: str) -> list[str]:
    secret = plane.get("secret", SECRET, namespace)
    assert secret is not None
    return [key.kid for key in keyset.loads(base64.b64decode(secret["data"][keymanager.DATA_KEY])).keys]


def delete_secret(plane: cluster.ControlPlane, namespace: str) -> None:
    plane.kubectl("delete", "secret", SECRET, f"--namespace={namespace}")
    assert plane.get("secret", SECRET, namespace) is None


def test_deleted_secret_is_recreated_with_the_published_keys(
    control_plane: cluster.ControlPlane,
    clients: list[kubeapi.KubeAPI],
    namespace: str,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, issuer = Clock(1_000_000), Issuer()
    provider = replica(clients[0], namespace, tmp_path, issuer, clock)
    provider.refresh()
    issuer.upload(provider)
    clock.now += keymanager.PUBLICATION_RETRY
    provider.refresh()
    (first,) = stored_kids(control_plane, namespace)
    assert signer(provider, issuer) == first

    # A successor is due and published; then the Secret is deleted by hand.
    clock.now += managed().issuer.keys.rotation_period - DAY
    provider.refresh()
    issuer.upload(provider)
    published = stored_kids(control_plane, namespace)
    assert len(published) == 2
    delete_secret(control_plane, namespace)
    clock.now += 15
    with caplog.at_level(logging.WARNING, logger="kube_sts.keys"):
        provider.refresh()

    assert stored_kids(control_plane, namespace) == published  # the same keys, no new one
    assert "had disappeared; recreated it with the keys still published" in caplog.text
    assert [jwk["kid"] for jwk in provider.jwks()["keys"]] == published
    assert signer(provider, issuer) == first  # the current key keeps signing
    assert provider.status() == (True, f"endpoint aws: signing with {first}")

    # Another replica starting now loads the recreated set, and the schedule goes on with it.
    other = replica(clients[1], namespace, tmp_path, issuer, clock)
    other.refresh()
    assert signer(other, issuer) == first
    clock.now += DAY
    for each in (provider, other):
        each.refresh()
        assert signer(each, issuer) == published[1]
    assert stored_kids(control_plane, namespace) == published


def test_replicas_racing_to_recreate_write_the_same_keys_once(
    control_plane: cluster.ControlPlane, clients: list[kubeapi.KubeAPI], namespace: str, tmp_path: pathlib.Path
) -> None:
    clock, issuer = Clock(1_000_000), Issuer()
    providers = [replica(client, namespace, tmp_path, issuer, clock) for client in clients]
    for provider in providers:
        provider.refresh()
    issuer.upload(providers[0])
    clock.now += keymanager.PUBLICATION_RETRY
    (kid,) = stored_kids(control_plane, namespace)
    delete_secret(control_plane, namespace)
    for provider in providers:
        provider.refresh()
    assert stored_kids(control_plane, namespace) == [kid]
    assert [signer(provider, issuer) for provider in providers] == [kid, kid]


def test_without_the_keys_in_memory_a_new_key_never_signs_before_the_issuer_serves_it(
    control_plane: cluster.ControlPlane, clients: list[kubeapi.KubeAPI], namespace: str, tmp_path: pathlib.Path
) -> None:
    # The Secret was lost while no replica ran: the only way out is a new key and an upload.
    # Until the issuer serves it, the token service refuses (503) instead of signing tokens that
    # every relying party rejects; the replica stays in the Service so that /aws/issuer-docs can
    # be fetched and uploaded.
    clock, issuer = Clock(1_000_000), Issuer()
    issuer.kids = {"an-old-key-whose-private-half-is-gone"}
    provider = replica(clients[0], namespace, tmp_path, issuer, clock)
    for _ in range(3):
        provider.refresh()
        assert signer(provider, issuer) is None
        clock.now += 15
    (new,) = stored_kids(control_plane, namespace)
    ready, reason = provider.status()
    assert ready
    assert f"signs no token until https://d1.cloudfront.net/certs serves {new}" in reason
    issuer.upload(provider)
    clock.now += keymanager.PUBLICATION_RETRY
    provider.refresh()
    assert signer(provider, issuer) == new
