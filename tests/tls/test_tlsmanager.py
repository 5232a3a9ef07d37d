"""The TLS manager against the API server double, for what needs the requests it sends counted
(no write when nothing drifted, one creation among racing replicas, no write to a foreign or
corrupt Secret); the test TLS server and client here serve tests/controlplane/test_tls_secrets.py,
where the drift, renewal and CA rollover run against the real API server."""

from __future__ import annotations

import asyncio
import base64
import datetime
import pathlib
import socket
import ssl
import threading
import time
from typing import Any

import pytest

from harness import apiserver
from kube_sts.runtime import config
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tls import certificates
from kube_sts.runtime.tls import manager as tlsmanager

NAMES = ["kube-sts", "kube-sts.kube-sts", "kube-sts.kube-sts.svc", "kube-sts.kube-sts.svc.cluster.local"]
WEBHOOKS = ("kube-sts", "kube-sts-extra")
DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def runtime(watch_seconds: int = 240) -> config.RuntimeConfig:
    return config.RuntimeConfig.model_validate(
        {
            "cluster": "test",
            "namespace": "kube-sts",
            "serviceUrl": "https://kube-sts.kube-sts.svc",
            "stsAudience": "kube-sts",
            "sidecarImage": "registry.example/kube-sts:test",
            "sidecarResources": {},
            "webhookConfigurations": list(WEBHOOKS),
            "tls": {"mode": "runtime", "secretName": "kube-sts-tls", "dnsNames": NAMES, "watchSeconds": watch_seconds},
            "endpoints": [],
        }
    )


def add_webhooks(api_server: apiserver.APIServer) -> None:
    for name in WEBHOOKS:
        api_server.put(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": f"{hook}.kube-sts.io",
                        "clientConfig": {"service": {"name": "kube-sts", "namespace": "kube-sts", "path": "/mutate"}},
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                    }
                    for hook in ("aws", "azure")
                ],
            }
        )


def ca_bundles(api_server: apiserver.APIServer) -> set[bytes]:
    found = set()
    for name in WEBHOOKS:
        obj = api_server.get("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "", name)
        assert obj is not None
        for hook in obj["webhooks"]:
            found.add(base64.b64decode(hook["clientConfig"]["caBundle"]))
            assert hook["clientConfig"]["service"]["name"] == "kube-sts"  # the patch kept other fields
    return found


def stored_secret(api_server: apiserver.APIServer) -> dict[str, Any]:
    obj = api_server.get("v1", "secrets", "kube-sts", "kube-sts-tls")
    assert obj is not None
    return obj


def manager(kube: kubeapi.KubeAPI, clock: Clock, policy: certificates.Policy | None = None) -> tlsmanager.TLSManager:
    return tlsmanager.TLSManager(runtime(), kube, directory=None, clock=clock, policy=policy)


def test_first_start_creates_the_secret_and_patches_every_ca_bundle(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI
) -> None:
    add_webhooks(api_server)
    tls = manager(kube, Clock(time.time()))
    assert tls.status() == (False, "no certificate loaded yet")
    tls.tick()
    assert tls.status() == (True, "serving a valid certificate")
    secret = stored_secret(api_server)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"][certificates.LABEL] == "v1"
    assert sorted(secret["data"]) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    ca = base64.b64decode(secret["data"]["ca.crt"])
    assert ca_bundles(api_server) == {ca}
    assert tls.ca_bundle() == ca
    patches = api_server.requests_to("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", "PATCH")
    assert len(patches) == 2
    tls.tick()  # nothing drifted: no further writes
    assert (
        len(api_server.requests_to("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", "PATCH")) == 2
    )


def wait_for(condition: Any, what: str, log: pytest.LogCaptureFixture) -> None:
    """A hang guard, not a measurement: fail with the log when ``condition`` does not come."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{log.text[-3000:]}"
        time.sleep(0.05)


def test_the_ca_bundle_watch_outlives_broken_watches_and_restores_a_wipe(
    api_server: apiserver.APIServer,
    kube: kubeapi.KubeAPI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every way a watch breaks (the connection reset mid-stream, a line that is not JSON, a stream
    that ends at once, a 410 Gone) ends one round; the next reads the configuration again and
    watches on, and a wipe after all of them is still undone by the watch."""
    caplog.set_level("INFO", "kube_sts.tls")
    monkeypatch.setattr(tlsmanager, "WATCH_RETRY", 0.05)
    add_webhooks(api_server)
    faults = ["reset", "junk", "end", "gone"]
    api_server.watch_faults = faults * len(WEBHOOKS)
    tls = tlsmanager.TLSManager(runtime(watch_seconds=2), kube, directory=None)
    tls.start()
    try:
        assert tls.secrets is not None
        secrets = tls.secrets
        [ca] = ca_bundles(api_server)
        wait_for(lambda: not api_server.watch_faults, "every fault met a watch", caplog)
        # each configuration's watch runs again: a round without a failure (a full-length watch)
        rounds = dict(secrets.watch_rounds)
        wait_for(
            lambda: all(secrets.watch_rounds[n] > rounds[n] + 1 and secrets.watch_failures[n] == 0 for n in WEBHOOKS),
            "the watches did not run again after the faults",
            caplog,
        )
        for failure in ("Response ended prematurely", "not JSON", "ended the watch after", "ERROR 410"):
            assert failure in caplog.text, failure
        watches = [r for r in api_server.requests_to(apiserver_webhooks(), "GET") if r.query.get("watch") == ["true"]]
        versions = [r.query.get("resourceVersion", [None])[0] for r in watches]
        assert None not in versions  # never a watch the real server answers only once its cache caught up
        assert "0" in versions  # after the 410: from the state the server holds, after a fresh read
        obj = api_server.get("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "", WEBHOOKS[0])
        assert obj is not None
        for hook in obj["webhooks"]:
            del hook["clientConfig"]["caBundle"]
        api_server.put(obj)  # a GitOps replace
        wait_for(lambda: ca_bundles_or_none(api_server) == {ca}, "the wiped caBundle was not restored", caplog)
    finally:
        tls.stop()


def apiserver_webhooks() -> str:
    return "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def ca_bundles_or_none(api_server: apiserver.APIServer) -> set[bytes] | None:
    try:
        return ca_bundles(api_server)
    except KeyError:  # a hook without a caBundle
        return None


def test_replicas_starting_together_end_with_one_ca(api_server: apiserver.APIServer) -> None:
    add_webhooks(api_server)
    clients = [kubeapi.KubeAPI.for_host(api_server.url, timeout=5.0) for _ in range(4)]
    managers = [manager(client, Clock(time.time())) for client in clients]
    barrier = threading.Barrier(len(managers))
    errors: list[BaseException] = []

    def start(tls: tlsmanager.TLSManager) -> None:
        barrier.wait()
        try:
            tls.tick()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(tls,)) for tls in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for client in clients:
        client.close()
    assert errors == []
    # Every replica that saw no Secret tried to create one; one creation won, nobody overwrote it.
    assert 1 <= len(api_server.requests_to("/api/v1/namespaces/kube-sts/secrets", "POST")) <= 4
    assert api_server.requests_to("/api/v1/namespaces/kube-sts/secrets/kube-sts-tls", "PUT") == []
    stored = base64.b64decode(stored_secret(api_server)["data"]["ca.crt"])
    assert {tls.ca_bundle() for tls in managers} == {stored}
    assert {tls.serving.certificate() for tls in managers} != {None}
    assert ca_bundles(api_server) == {stored}


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ({"metadata": {"name": "kube-sts-tls", "namespace": "kube-sts"}, "type": "kubernetes.io/tls",
          "data": {"tls.crt": "Zm9v", "tls.key": "YmFy"}}, "was not created by kube-sts"),
        ({"metadata": {"name": "kube-sts-tls", "namespace": "kube-sts", "labels": {certificates.LABEL: "v1"}},
          "type": "kubernetes.io/tls", "data": {"tls.crt": "Zm9v", "tls.key": "YmFy", "ca.crt": "Zm9v",
          "ca.key": "Zm9v"}}, "is corrupt: tls.crt is not PEM certificate data"),
    ],
)  # fmt: skip
def test_foreign_or_corrupt_secret_is_reported_and_never_written(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, secret: dict[str, Any], message: str
) -> None:
    add_webhooks(api_server)
    api_server.put({"apiVersion": "v1", "kind": "Secret", **secret})
    before = stored_secret(api_server)
    tls = manager(kube, Clock(time.time()))
    tls.tick()
    ready, reason = tls.status()
    assert not ready
    assert message in reason
    assert stored_secret(api_server) == before
    assert api_server.requests_to("/api/v1/namespaces/kube-sts/secrets", "PUT") == []
    assert api_server.requests_to("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", "PATCH") == []


# -- a real TLS server ------------------------------------------------------------------------


class Server:
    """An asyncio HTTPS server (the transport uvicorn uses) answering 200 on keep-alive connections."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> Server:
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context), self.loop
        ).result(10)
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Client:
    """A keep-alive HTTPS client that trusts only ``ca`` and checks the service's DNS name."""

    def __init__(self, port: int, ca: bytes) -> None:
        context = ssl.create_default_context(cadata=ca.decode())
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), 10), server_hostname=NAMES[2])

    def get(self) -> bytes:
        self.sock.sendall(b"GET / HTTP/1.1\r\nHost: kube-sts\r\n\r\n")
        return self.sock.recv(1024)

    def served(self) -> bytes:
        return self.sock.getpeercert(binary_form=True) or b""

    def close(self) -> None:
        self.sock.close()


def test_cert_manager_mode_reloads_changed_files(tmp_path: pathlib.Path) -> None:
    data_one = certificates.to_secret_data(certificates.create(NAMES, datetime.datetime.now(datetime.UTC)))
    data_two = certificates.to_secret_data(certificates.create(NAMES, datetime.datetime.now(datetime.UTC)))
    for key in tlsmanager.FILES:
        (tmp_path / key).write_bytes(data_one[key])
    cfg = runtime().model_copy(update={"tls": config.TLS(mode="cert-manager", secret_name="x", dns_names=tuple(NAMES))})
    tls = tlsmanager.TLSManager(cfg, None, directory=tmp_path)
    assert tls.secrets is None
    tls.tick()
    assert tls.status()[0] is True
    with Server(tls.server_context()) as server:
        client = Client(server.port, data_one["ca.crt"])
        assert client.get().startswith(b"HTTP/1.1 200")
        for key in tlsmanager.FILES:
            (tmp_path / key).write_bytes(data_two[key])
        assert tls.serving.poll_files() is True
        assert client.get().startswith(b"HTTP/1.1 200")  # in flight: still the old certificate
        client.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            Client(server.port, data_one["ca.crt"])
        fresh = Client(server.port, data_two["ca.crt"])
        assert fresh.get().startswith(b"HTTP/1.1 200")
        fresh.close()
    assert tls.ca_bundle() == data_two["ca.crt"]
    (tmp_path / "tls.key").write_bytes(data_one["tls.key"])  # a key that does not fit: keep serving
    assert tls.serving.poll_files() is False
    assert tls.ca_bundle() == data_two["ca.crt"]
