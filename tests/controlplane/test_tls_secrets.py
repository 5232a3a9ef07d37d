"""The TLS manager in the test process against real Secrets and real MutatingWebhookConfigurations:
a drifted caBundle patched back, a serving certificate renewed near expiry and a CA rolled over
with clients that trust only the bundle, and the token service on uvicorn serving the managed and
then the renewed certificate. Each test has a namespace and webhook configurations of its own
(the webhooks have no rules: no request ever reaches them); the manager's clock is a test clock,
its client the admin. What counts the requests the manager sends stays in tests/tls on the double."""

from __future__ import annotations

import base64
import datetime
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness import runtime as harness
from kube_sts.runtime import config, server
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tls import certificates
from kube_sts.runtime.tls import manager as tlsmanager
from tests.controlplane import cluster
from tests.tls.test_tlsmanager import DAY, NAMES, Client, Clock, Server


class Webhooks:
    """The namespace's TLS Secret and its two webhook configurations, as the API server stores them."""

    def __init__(self, plane: cluster.ControlPlane, namespace: str) -> None:
        self.plane, self.namespace = plane, namespace
        self.names = (f"{namespace}-a", f"{namespace}-b")

    def apply(self, verb: str = "apply") -> None:
        """The configurations as compiled (no caBundle), with ``kubectl apply`` or ``kubectl replace``."""
        documents = [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": f"{hook}.kube-sts.io",
                        "clientConfig": {
                            "service": {"name": "kube-sts", "namespace": self.namespace, "path": "/mutate"}
                        },
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                    }
                    for hook in ("aws", "azure")
                ],
            }
            for name in self.names
        ]
        listed = {"apiVersion": "v1", "kind": "List", "items": documents}
        self.plane.kubectl(verb, "-f", "-", input=json.dumps(listed))

    def remove(self) -> None:
        for name in self.names:
            self.plane.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")

    def ca_bundles(self) -> set[bytes]:
        found = set()
        for name in self.names:
            stored = self.plane.get("mutatingwebhookconfiguration", name)
            assert stored is not None
            for hook in stored["webhooks"]:
                found.add(base64.b64decode(hook["clientConfig"].get("caBundle", "")))
                assert hook["clientConfig"]["service"]["name"] == "kube-sts"  # the patch kept other fields
        return found

    def stored_secret(self) -> dict[str, Any]:
        stored = self.plane.get("secret", "kube-sts-tls", self.namespace)
        assert stored is not None
        return stored

    def runtime(self) -> config.RuntimeConfig:
        return config.RuntimeConfig.model_validate(
            {
                "cluster": "test",
                "namespace": self.namespace,
                "serviceUrl": "https://kube-sts.kube-sts.svc",
                "stsAudience": "kube-sts",
                "sidecarImage": "registry.example/kube-sts:test",
                "sidecarResources": {},
                "webhookConfigurations": list(self.names),
                "tls": {"mode": "runtime", "secretName": "kube-sts-tls", "dnsNames": NAMES},
                "endpoints": [],
            }
        )

    def manager(
        self, kube: kubeapi.KubeAPI, clock: Clock, policy: certificates.Policy | None = None
    ) -> tlsmanager.TLSManager:
        return tlsmanager.TLSManager(self.runtime(), kube, directory=None, clock=clock, policy=policy)


def readyz(port: int, bundle: bytes) -> tuple[bytes, dict[str, object], bytes]:
    client = Client(port, bundle)
    try:
        client.sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: kube-sts\r\nConnection: close\r\n\r\n")
        answer = b""
        for _ in range(100):
            chunk = client.sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0], json.loads(body), client.served()
    finally:
        client.close()


@pytest.fixture
def webhooks(control_plane: cluster.ControlPlane, namespace: str) -> Iterator[Webhooks]:
    hooks = Webhooks(control_plane, namespace)
    hooks.apply()
    try:
        yield hooks
    finally:
        hooks.remove()


def test_drifted_ca_bundle_is_patched_back(webhooks: Webhooks, admin_kube: kubeapi.KubeAPI) -> None:
    tls = webhooks.manager(admin_kube, Clock(time.time()))
    tls.tick()
    assert webhooks.ca_bundles() == {tls.ca_bundle()}
    webhooks.apply()  # kubectl apply of the manifests again: the three-way merge keeps the caBundle
    assert webhooks.ca_bundles() == {tls.ca_bundle()}
    webhooks.apply("replace")  # replaced as compiled (what replace-based deploy tools do): no caBundle
    assert webhooks.ca_bundles() == {b""}
    assert tls.secrets is not None
    tls.secrets.reconcile()
    assert webhooks.ca_bundles() == {tls.ca_bundle()}


def test_renewal_near_expiry_keeps_clients_connecting(webhooks: Webhooks, admin_kube: kubeapi.KubeAPI) -> None:
    real = time.time()
    clock = Clock(real - 250 * DAY)  # the certificate was issued 250 days ago; due at 243
    tls = webhooks.manager(admin_kube, clock)
    tls.tick()
    first = tls.serving.certificate()
    assert first is not None
    bundle = tls.ca_bundle()
    assert bundle is not None
    with Server(tls.server_context()) as running:
        before = Client(running.port, bundle)
        assert before.get().startswith(b"HTTP/1.1 200")
        clock.now = real
        tls.tick()
        second = tls.serving.certificate()
        assert second is not None and second.serial_number != first.serial_number
        assert tls.ca_bundle() == bundle  # same CA, same bundle
        assert datetime.datetime.fromtimestamp(real, datetime.UTC) < certificates.renew_at(second)
        assert before.get().startswith(b"HTTP/1.1 200")  # the open connection kept going
        after = Client(running.port, bundle)
        assert after.get().startswith(b"HTTP/1.1 200")
        assert before.served() != after.served()
        before.close()
        after.close()
    assert base64.b64decode(webhooks.stored_secret()["data"]["tls.crt"]) == certificates.dump_pem(second)
    assert webhooks.ca_bundles() == {bundle}


def test_ca_rollover_keeps_clients_trusting_the_bundle(webhooks: Webhooks, admin_kube: kubeapi.KubeAPI) -> None:
    policy = certificates.Policy(
        ca_validity=datetime.timedelta(days=40),
        ca_rollover_lead=datetime.timedelta(days=20),
        ca_overlap=datetime.timedelta(days=5),
        serving_validity=datetime.timedelta(days=14),
    )
    real = time.time()
    start = real - 30 * DAY
    clock = Clock(start)
    tls = webhooks.manager(admin_kube, clock, policy)
    tls.tick()
    clock.now = start + 20 * DAY  # rollover point: the next CA is published, the old one still signs
    tls.tick()
    published = tls.ca_bundle()
    assert published is not None and published.count(b"BEGIN CERTIFICATE") == 2
    assert webhooks.ca_bundles() == {published}
    with Server(tls.server_context()) as running:
        old_signed = Client(running.port, published)
        assert old_signed.get().startswith(b"HTTP/1.1 200")
        clock.now = real  # past the overlap and the serving certificate's renewal point
        tls.tick()
        assert tls.ca_bundle() == published  # both CAs stay until the old one expires
        assert old_signed.get().startswith(b"HTTP/1.1 200")
        new_signed = Client(running.port, published)
        assert new_signed.get().startswith(b"HTTP/1.1 200")
        assert old_signed.served() != new_signed.served()
        old_signed.close()
        new_signed.close()
    assert tls.secrets is not None and tls.secrets.bundle is not None
    signer = certificates.signer(tls.secrets.bundle, datetime.datetime.fromtimestamp(real, datetime.UTC), policy)
    assert signer is tls.secrets.bundle.authorities[1]
    assert tls.secrets.bundle.certificate.issuer == signer.certificate.subject
    assert webhooks.ca_bundles() == {published}


def test_server_serves_the_managed_certificate_and_the_renewed_one(
    webhooks: Webhooks, admin_kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> None:
    """The token service on uvicorn listening with the TLS manager's context: ready, renewed, still reachable."""
    base = harness.runtime_config(harness.endpoint(mode="managed"))
    runtime = base.model_copy(
        update={
            "namespace": webhooks.namespace,
            "tls": webhooks.runtime().tls,
            "webhook_configurations": webhooks.names,
        }
    )
    real = time.time()
    clock = Clock(real - 250 * DAY)
    tls = tlsmanager.TLSManager(runtime, admin_kube, directory=None, clock=clock, file_interval=3600)
    app = server.build(runtime, kube=admin_kube, keys_dir=tmp_path / "keys", tls=tls)
    with harness.RunningServer(app, None, tls.server_context()) as running:
        bundle = tls.ca_bundle()
        assert bundle is not None  # created during the application's startup
        assert webhooks.ca_bundles() == {bundle}
        status, body, first = readyz(running.port, bundle)
        assert status == b"HTTP/1.1 200 OK", body
        clock.now = real
        tls.tick()
        status, body, second = readyz(running.port, bundle)
        assert status == b"HTTP/1.1 200 OK", body
        assert first != second
        served = tls.serving.certificate()
        assert served is not None
        stored = base64.b64decode(webhooks.stored_secret()["data"]["tls.crt"])
        assert stored == certificates.dump_pem(served)
        clock.now = real + 400 * DAY  # the served certificate's lifetime is over: not ready
        status, body, _ = readyz(running.port, bundle)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert "expired" in json.dumps(body)
