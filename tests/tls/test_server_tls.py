"""The token service on uvicorn listening with the TLS manager's context: ready, renewed, still reachable."""

from __future__ import annotations

import base64
import json
import pathlib
import time

from kube_sts.runtime import server
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tls import certificates
from kube_sts.runtime.tls import manager as tlsmanager
from tests import apiserver
from tests.runtime import harness
from tests.tls import test_tlsmanager as support


def readyz(port: int, bundle: bytes) -> tuple[bytes, dict[str, object], bytes]:
    client = support.Client(port, bundle)
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


def test_server_serves_the_managed_certificate_and_the_renewed_one(
    api_server: apiserver.APIServer, kube: kubeapi.KubeAPI, tmp_path: pathlib.Path
) -> None:
    support.add_webhooks(api_server)
    base = harness.runtime_config(harness.endpoint(mode="managed"))
    runtime = base.model_copy(update={"tls": support.runtime().tls, "webhook_configurations": support.WEBHOOKS})
    real = time.time()
    clock = support.Clock(real - 250 * support.DAY)
    tls = tlsmanager.TLSManager(runtime, kube, directory=None, clock=clock, file_interval=3600)
    app = server.build(runtime, kube=kube, keys_dir=tmp_path / "keys", tls=tls)
    with harness.RunningServer(app, None, tls.server_context()) as running:
        bundle = tls.ca_bundle()
        assert bundle is not None  # created during the application's startup
        status, body, first = readyz(running.port, bundle)
        assert status == b"HTTP/1.1 200 OK", body
        clock.now = real
        tls.tick()
        status, body, second = readyz(running.port, bundle)
        assert status == b"HTTP/1.1 200 OK", body
        assert first != second
        served = tls.serving.certificate()
        assert served is not None
        stored = base64.b64decode(support.stored_secret(api_server)["data"]["tls.crt"])
        assert stored == certificates.dump_pem(served)
        clock.now = real + 400 * support.DAY  # the served certificate's lifetime is over: not ready
        status, body, _ = readyz(running.port, bundle)
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert "expired" in json.dumps(body)
