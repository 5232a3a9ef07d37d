"""End to end on loopback against the real API server: the compiled AWS example applied, a runtime
process of the test's own (as ServiceAccount kube-sts, beside the tier's), the AdmissionReview
answered, the injected sidecar as a process exchanging a TokenRequest bound to a real Pod,
botocore against the AssumeRoleWithWebIdentity double, the token service down and back, SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest

from harness.reviews import seed_pod
from kube_sts.runtime import sidecar
from tests import awssts
from tests.controlplane import deployment
from tests.controlplane.test_exchange import create_pod


@pytest.fixture
def runtime(deployed: deployment.Deployment, myns: str, tmp_path: pathlib.Path) -> Iterator[deployment.Runtime]:
    """A runtime of this test's own on 127.0.0.1 (the test stops and restarts it)."""
    service = deployed.runtime(tmp_path / "runtime")
    service.start()
    try:
        yield service
    finally:
        service.stop()


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def test_end_to_end(runtime: deployment.Runtime, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plane = runtime.deployment.plane
    # runtime TLS mode (the default): the runtime created its CA and serving certificate, and the caBundle
    assert runtime.config["tls"]["mode"] == "runtime"
    base = f"https://localhost:{runtime.port}"
    tls_secret = runtime.secret(runtime.config["tls"]["secretName"])
    assert tls_secret is not None
    ca_bundle = tls_secret["ca.crt"].decode()
    # admission of the seed's Pod (in the namespace the seed's azRules allow)
    pod = seed_pod()
    pod["metadata"]["namespace"] = "myns"
    pod["spec"]["serviceAccountName"] = "app"
    patched = deployment.admit(runtime, "aws", pod, "e2e-1")
    [side] = [c for c in patched["spec"]["initContainers"] if c["name"] == "kube-sts-aws"]
    [app] = patched["spec"]["containers"]
    # the sidecar trusts the CA the runtime created, and so does the API server (caBundle)
    assert ca_bundle == {e["name"]: e["value"] for e in side["env"]}["KUBE_STS_CA"]
    bundles = runtime.ca_bundles()  # every webhook of the compiled configurations, read back
    assert bundles and {bundle.decode() for bundle in bundles} == {ca_bundle}

    # the Pod's files, mapped into the temp directory; the Service URL mapped to the local port
    stored = create_pod(plane, "myns", "end-to-end", labelled=False)
    sa_token = plane.token("myns", "app", runtime.config["stsAudience"], pod=stored)
    injected = deployment.InjectedSidecar(runtime, side, tmp_path / "pod", sa_token)
    local, env, command, token_file = injected.local, injected.env, injected.command, injected.token_file
    process = injected.start()
    try:
        assert oct(token_file.stat().st_mode & 0o777) == "0o644"
        token = token_file.read_text()
        minted = claims(token)
        assert minted["sub"] == "kubernetes:myns:app" and minted["aud"] == "sts.aws.com"

        # botocore with the application container's variables against the STS double
        with awssts.AWSSTS() as sts:
            sts.add_provider(awssts.Provider(minted["iss"], ("sts.aws.com",), base + "/aws", runtime.client_context()))
            for name in list(os.environ):
                if name.startswith("AWS_"):
                    monkeypatch.delenv(name)
            for variable in app["env"]:
                monkeypatch.setenv(variable["name"], local(variable["value"]))
            monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
            monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
            monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
            monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
            assert os.environ["AWS_ROLE_ARN"].startswith("arn:aws:iam::")
            assert os.environ["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
            credentials = botocore.session.Session().get_credentials()
            assert credentials is not None and credentials.method == "assume-role-with-web-identity"
            frozen = credentials.get_frozen_credentials()
            assert sts.errors == [] and frozen.access_key == sts.calls[0].access_key_id

        # token service down: the sidecar keeps its token; back up: the --once mode fetches again
        runtime.stop()
        time.sleep(1.5)
        assert process.poll() is None and token_file.read_text() == token
        assert sidecar.valid_on_disk(str(token_file), time.time()) is not None
        runtime.start()
        once = subprocess.run([*command, "--once"], env=env, check=False, timeout=30, capture_output=True, text=True)
        assert once.returncode == 0, once.stderr
        assert sa_token not in once.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert sa_token not in stderr and token not in stderr
