"""The ``gcp`` preset end to end: compiled values, the runtime process, admission, the injected
sidecar as a process, and google-auth's ``identity_pool`` credentials built from the injected
files alone (``GOOGLE_APPLICATION_CREDENTIALS`` and the configuration the sidecar wrote), which
obtain an access token from the verifying Google STS double (``tests/gcpsts.py``)."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import google.auth.identity_pool
import google.auth.transport.requests
import jsonpatch
import kubernetes_validate
import pytest
import requests

from kube_sts.runtime.webhook import injection
from tests import apiserver, gcpsts
from tests.adversarial.attacks import Runtime
from tests.controlplane.test_exchange import claims
from tests.runtime import harness

PROVIDER = "projects/123456789012/locations/global/workloadIdentityPools/kube-sts/providers/cluster"
RESOURCE = "//iam.googleapis.com/" + PROVIDER
ISSUER_HOST = "gcp-issuer.example"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
SERVICE_ACCOUNT = "reader@my-project.iam.gserviceaccount.com"


def values(token_url: str) -> str:
    return f"""\
sts:
  endpoints:
  - name: gcp
    preset: gcp
    gcp:
      provider: {PROVIDER}
      tokenUrl: {token_url}
    path: /gcp
    azRules:
    - scope: filter
      constraint: "(namespace=myns)"
    issuer:
      host: {ISSUER_HOST}
      keypair: kube-sts-gcp
    injector:
      label: gcp-identity
"""


@pytest.fixture
def tls(tmp_path: pathlib.Path) -> harness.TLSFiles:
    return harness.make_tls(tmp_path / "double-tls")


@pytest.fixture
def google_sts(tls: harness.TLSFiles) -> Iterator[gcpsts.GoogleSTS]:
    with gcpsts.GoogleSTS(tls.server_context()) as double:
        yield double


@pytest.fixture
def runtime(api_server: apiserver.APIServer, google_sts: gcpsts.GoogleSTS, tmp_path: pathlib.Path) -> Iterator[Runtime]:
    path = tmp_path / "values.yaml"
    path.write_text(values(google_sts.token_url))
    running = Runtime(api_server, tmp_path, path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def review(pod: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "gcp-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": "myns",
                "object": pod,
            },
        }
    ).encode()


def pod(identity: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "reader",
            "namespace": "myns",
            "labels": {"tremolo.io/gcp-identity": "true"},
            "annotations": {"tremolo.io/gcp-identity": identity},
        },
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "python:3.11-slim"}]},
    }


def admitted(runtime: Runtime, identity: str) -> dict[str, Any]:
    answer = runtime.post("/mutate/gcp", review(pod(identity)))
    assert answer["response"]["allowed"] is True
    patched: dict[str, Any] = jsonpatch.apply_patch(
        pod(identity), json.loads(base64.b64decode(answer["response"]["patch"]))
    )
    for version in ("1.29", "1.31", "1.33"):
        kubernetes_validate.validate(patched, version, strict=True)
    return patched


def test_google_auth_obtains_a_token_from_the_injected_files_alone(
    runtime: Runtime,
    api_server: apiserver.APIServer,
    google_sts: gcpsts.GoogleSTS,
    tls: harness.TLSFiles,
    tmp_path: pathlib.Path,
) -> None:
    patched = admitted(runtime, "true")
    [side] = patched["spec"]["initContainers"]
    [app] = patched["spec"]["containers"]
    app_env = {e["name"]: e["value"] for e in app["env"]}
    assert app_env == {
        "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/secrets/kube-sts/gcp/credential-configuration.json",
        "KUBE_STS_TOKEN_FILE": "/var/run/secrets/kube-sts/gcp/token",
        "KUBE_STS_IDENTITY": "true",
    }
    assert {"name": "kube-sts-gcp-token", "mountPath": "/var/run/secrets/kube-sts/gcp", "readOnly": True} in app[
        "volumeMounts"
    ]

    # The Pod's files mapped into the temp directory (every /var/run/secrets/ path, also inside the
    # sidecar's variables), the Service URL mapped to the runtime's local port.
    stored = api_server.add_pod("myns", "reader")
    mapped = tmp_path / "pod"

    def local(value: str) -> str:
        value = value.replace("https://kube-sts.kube-sts.svc", runtime.base)
        return value.replace("/var/run/secrets/", f"{mapped}/")

    for mount in side["volumeMounts"]:
        pathlib.Path(local(mount["mountPath"])).mkdir(parents=True)
    args = dict(zip(side["args"], side["args"][1:], strict=False))
    pathlib.Path(local(args["--service-account-token"])).write_text(
        api_server.issue_token("myns", "app", pod=stored, audiences=["kube-sts"])
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "KUBE_STS_"))}
    env.update({e["name"]: local(e["value"]) for e in side["env"]})
    bin_dir = pathlib.Path(sys.executable).parent
    process = subprocess.Popen(
        [str(bin_dir / side["command"][0]), *map(local, side["args"])], env=env, stderr=subprocess.PIPE, text=True
    )
    probe = [
        str(bin_dir / side["startupProbe"]["exec"]["command"][0]),
        *map(local, side["startupProbe"]["exec"]["command"][1:]),
    ]
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(probe, check=False).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, "no token"
            time.sleep(0.1)
        configuration = pathlib.Path(local(app_env["GOOGLE_APPLICATION_CREDENTIALS"]))
        assert oct(configuration.stat().st_mode & 0o777) == "0o644"
        minted = claims(pathlib.Path(local(app_env["KUBE_STS_TOKEN_FILE"])).read_text())
        assert minted["aud"] == "https://iam.googleapis.com/" + PROVIDER and minted["iss"] == f"https://{ISSUER_HOST}"

        google_sts.add_provider(
            gcpsts.Provider(RESOURCE, f"https://{ISSUER_HOST}", runtime.base + "/gcp", runtime.client_context())
        )
        credentials = google.auth.identity_pool.Credentials.from_file(  # type: ignore[no-untyped-call]
            str(configuration), scopes=[CLOUD_PLATFORM]
        )
        session = requests.Session()
        session.verify, session.trust_env = str(tls.ca), False
        credentials.refresh(google.auth.transport.requests.Request(session))
        assert google_sts.errors == []
        [call] = google_sts.calls
        assert credentials.valid and credentials.token == call.access_token
        assert call.provider == RESOURCE and call.claims["sub"] == "kubernetes:myns:app"
        assert credentials.service_account_email is None  # direct resource access
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_a_service_account_annotation_is_impersonated(runtime: Runtime) -> None:
    [side] = admitted(runtime, SERVICE_ACCOUNT)["spec"]["initContainers"]
    document = json.loads({e["name"]: e["value"] for e in side["env"]}[injection.CREDENTIAL_CONFIG_ENV])
    credentials = google.auth.identity_pool.Credentials.from_info(document)  # type: ignore[no-untyped-call]
    assert credentials.service_account_email == SERVICE_ACCOUNT
    assert document["credential_source"] == {"file": "/var/run/secrets/kube-sts/gcp/token", "format": {"type": "text"}}
