"""Key rotation and TLS renewal against real Secrets (resourceVersion, replace), checked with a
TLS client that trusts only the caBundle read back from the API server."""

from __future__ import annotations

import base64
import datetime
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography import x509

from kube_sts.runtime.keys import keyset
from kube_sts.runtime.tls import certificates
from tests.controlplane import cluster, deployment
from tests.controlplane.test_exchange import create_pod, exchange


@pytest.fixture(scope="module")
def rotation_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[deployment.Deployment]:
    """A control plane of this module's own: these tests rewrite the runtime's Secrets."""
    directory = tmp_path_factory.mktemp("rotation")
    control = cluster.ControlPlane(directory / "plane").start()
    try:
        applied = deployment.Deployment.apply(control, deployment.EXAMPLES / "aws", directory / "aws")
        control.create_namespace("myns")
        yield applied
    finally:
        control.stop()


@pytest.fixture
def plane(rotation_plane: deployment.Deployment) -> deployment.Deployment:
    """The module's plane without the runtime's key set and TLS Secrets: each test's runtime
    starts from none, as on a fresh cluster."""
    config = rotation_plane.runtime_config()
    for name in (config["endpoints"][0]["issuer"]["keypair"], config["tls"]["secretName"]):
        rotation_plane.plane.kubectl(
            "delete", "secret", name, f"--namespace={rotation_plane.namespace}", "--ignore-not-found"
        )
    return rotation_plane


def replace_secret(runtime: deployment.Runtime, name: str, data: dict[str, bytes]) -> None:
    """``kubectl replace`` of the stored Secret's data, guarded by the resourceVersion read."""
    stored = runtime.deployment.plane.get("secret", name, runtime.deployment.namespace)
    assert stored is not None
    stored["data"] = {key: base64.b64encode(value).decode() for key, value in data.items()}
    runtime.deployment.plane.kubectl("replace", "-f", "-", input=json.dumps(stored))


def wait_for(condition: Any, what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def mint(runtime: deployment.Runtime, pod: dict[str, Any]) -> str:
    plane = runtime.deployment.plane
    status, answer = exchange(runtime, plane.token("myns", "app", runtime.config["stsAudience"], pod=pod))
    assert status == 200, answer
    token: str = answer["token"]
    return token


def test_key_rotation_through_the_secret(plane: deployment.Deployment, tmp_path: pathlib.Path) -> None:
    runtime = plane.runtime(tmp_path / "runtime")
    runtime.start()
    try:
        pod = create_pod(plane.plane, "myns", "rotation", labelled=False)
        before = mint(runtime, pod)
        name = runtime.config["endpoints"][0]["issuer"]["keypair"]
        stored = runtime.secret(name)
        assert stored is not None
        current = keyset.loads(stored["keyset.json"])
        [old] = current.keys
        assert jwt.get_unverified_header(before)["kid"] == old.kid

        # the successor as rotation leaves it a publication lead before its turn: both published,
        # the old key signing until the switch
        switch = int(time.time()) + 20
        successor = keyset.generate(old.algorithm, created=switch - 86400, sign_from=switch, sign_until=switch + 86400)
        rotated = current.with_keys([old.replace(sign_until=switch), successor])
        replace_secret(runtime, name, {"keyset.json": keyset.dumps(rotated)})

        def published() -> set[str]:
            status, jwks = runtime.get("/aws/certs")
            assert status == 200
            return {key["kid"] for key in jwks["keys"]}

        wait_for(lambda: published() == {old.kid, successor.kid}, "the successor is not published")
        wait_for(lambda: time.time() > switch + 1, "clock")
        after = mint(runtime, pod)
        assert jwt.get_unverified_header(after)["kid"] == successor.kid

        # both tokens verify against the JWKS the runtime serves now
        _, jwks = runtime.get("/aws/certs")
        keys = jwt.PyJWKSet.from_dict(jwks)
        for token in (before, after):
            header = jwt.get_unverified_header(token)
            key = keys[header["kid"]]
            claims = jwt.decode(token, key.key, algorithms=[header["alg"]], audience="sts.aws.com")
            assert claims["namespace"] == "myns"
        # the runtime kept the rotated set (it did not write its own over it)
        kept = runtime.secret(name)
        assert kept is not None
        assert {key.kid for key in keyset.loads(kept["keyset.json"]).keys} == {old.kid, successor.kid}
    finally:
        runtime.stop()


def test_tls_renewal_and_ca_bundle_through_the_secret(plane: deployment.Deployment, tmp_path: pathlib.Path) -> None:
    runtime = plane.runtime(tmp_path / "runtime")
    runtime.start()
    name = runtime.config["tls"]["secretName"]
    try:
        first = runtime.secret(name)
        assert first is not None and set(runtime.ca_bundles()) == {first["ca.crt"]}

        # a TLS Secret from elsewhere (another CA) whose serving certificate is past its renewal
        # point: issued 300 days ago for 365 days
        names = runtime.config["tls"]["dnsNames"]
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=300)
        planted = certificates.create(names, past)
        replace_secret(runtime, name, certificates.to_secret_data(planted))
        runtime.stop()
        runtime.start()  # the restart reads the Secret at once (no 5-minute resync wait)

        renewed = runtime.secret(name)
        assert renewed is not None
        assert renewed["ca.crt"] == planted.ca_pem()  # the CA is kept...
        served = x509.load_pem_x509_certificate(renewed["tls.crt"])
        assert served.serial_number != planted.certificate.serial_number  # ...the certificate renewed
        assert served.not_valid_before_utc > past + datetime.timedelta(days=299)
        # every webhook's caBundle now names the planted CA; a client trusting only it connects
        wait_for(lambda: set(runtime.ca_bundles()) == {planted.ca_pem()}, "the caBundle was not updated")
        connection = deployment.ServiceConnection(
            runtime.host, runtime.port, runtime.service_name, runtime.client_context()
        )
        connection.connect()
        try:
            peer = connection.sock.getpeercert(binary_form=True)
            assert peer is not None
            assert x509.load_der_x509_certificate(peer).serial_number == served.serial_number
        finally:
            connection.close()
    finally:
        runtime.stop()


def test_a_deleted_key_set_secret_is_recreated_with_the_same_keys(
    plane: deployment.Deployment, tmp_path: pathlib.Path
) -> None:
    runtime = plane.runtime(tmp_path / "runtime")
    runtime.start()
    try:
        pod = create_pod(plane.plane, "myns", "lost-secret", labelled=False)
        before = mint(runtime, pod)
        name = runtime.config["endpoints"][0]["issuer"]["keypair"]
        stored = runtime.secret(name)
        assert stored is not None
        kids = {key.kid for key in keyset.loads(stored["keyset.json"]).keys}
        plane.plane.kubectl("delete", "secret", name, f"--namespace={plane.namespace}")
        wait_for(lambda: runtime.secret(name) is not None, "the key set Secret was not recreated")
        recreated = runtime.secret(name)
        assert recreated is not None
        assert {key.kid for key in keyset.loads(recreated["keyset.json"]).keys} == kids
        after = mint(runtime, pod)
        assert jwt.get_unverified_header(after)["kid"] == jwt.get_unverified_header(before)["kid"]
    finally:
        runtime.stop()
