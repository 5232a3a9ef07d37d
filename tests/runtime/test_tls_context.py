"""The serving TLS context is one object for the server's lifetime: reloading it rotates the certificate."""

from __future__ import annotations

import pathlib
import ssl
import urllib.error
import urllib.request

import pytest

from kube_sts.runtime import kubeapi, server
from tests.runtime import harness


def test_reloading_the_context_serves_the_new_certificate(kube: kubeapi.KubeAPI, tmp_path: pathlib.Path) -> None:
    first = harness.make_tls(tmp_path / "first")
    second = harness.make_tls(tmp_path / "second")
    harness.write_keyset(tmp_path / "keys", "aws", "ES256")
    app = harness.make_app(harness.runtime_config(harness.endpoint(algorithm="ES256")), kube, tmp_path / "keys")
    context = server.tls_context(first.cert.parent)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with harness.RunningServer(app, first, context) as running:
        url = running.url + "/healthz"
        with urllib.request.urlopen(url, context=first.client_context(), timeout=10) as response:
            assert response.status == 200
        context.load_cert_chain(second.cert, second.key)  # what a certificate manager does on renewal
        with urllib.request.urlopen(url, context=second.client_context(), timeout=10) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(url, context=first.client_context(), timeout=10)
