"""End to end on loopback: compiled config, runtime process with TLS, admission, the injected
sidecar as a process, botocore against the AssumeRoleWithWebIdentity double, outage and SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import botocore.session
import jsonpatch
import kubernetes_validate
import pytest
import yaml

from kube_sts.runtime import sidecar
from tests import apiserver, awssts
from tests.runtime import harness
from tests.webhook.test_injection import seed_pod

ROOT = pathlib.Path(__file__).resolve().parents[2]
VALUES = ROOT / "examples" / "aws" / "values.yaml"
ROLE = "arn:aws:iam::123456789012:role/ou-sts-oidc"


class Runtime:
    def __init__(self, api: apiserver.APIServer, tmp: pathlib.Path, values: pathlib.Path = VALUES) -> None:
        out = tmp / "manifests"
        self.webhook_configurations: list[str] = []
        subprocess.run(
            [sys.executable, "-m", "kube_sts.compiler.cli", "--output-dir", str(out), str(values)],
            check=True,
            cwd=ROOT,
            timeout=60,
        )
        # A fresh cluster: the webhook configuration as compiled (empty caBundle), no TLS Secret.
        # The runtime creates its CA and serving certificate (runtime TLS mode, the default) and
        # fills in the caBundle. Its certificate also names "localhost", the loopback stand-in for
        # the Service's DNS names.
        for manifest in sorted(out.glob("*.yaml")):
            document = yaml.safe_load(manifest.read_text())
            if document["kind"] == "MutatingWebhookConfiguration":
                api.put(document)
                self.webhook_configurations.append(document["metadata"]["name"])
        runtime_config = json.loads(
            yaml.safe_load((out / "08-configmap-kube-sts-config.yaml").read_text())["data"]["config.json"]
        )
        assert runtime_config["tls"]["mode"] == "runtime"
        runtime_config["tls"]["dnsNames"].append("localhost")
        # The example's issuer host is not reachable from here, and with waitForPublication a key
        # the issuer does not serve never signs (tests/keys and tests/adversarial cover the wait).
        for endpoint in runtime_config["endpoints"]:
            endpoint["issuer"]["keys"]["waitForPublication"] = False
        self.namespace = runtime_config["namespace"]
        self.secret_name = runtime_config["tls"]["secretName"]
        self.config_file = tmp / "config.json"
        self.config_file.write_text(json.dumps(runtime_config))
        self.api = api
        kubeconfig = harness.write_kubeconfig(tmp / "kubeconfig", api.url)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AWS_"))}
        self.env.update({"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)})
        self.keys = tmp / "keys"
        self.port = harness.free_port()
        self.base = f"https://localhost:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "kube_sts.runtime.server",
            "--config",
            str(self.config_file),
            "--keys-dir",
            str(self.keys),
            "--tls-dir",
            str(self.config_file.parent / "no-tls-files"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.process.communicate()[1]
            try:
                with urllib.request.urlopen(self.base + "/readyz", context=self.client_context(), timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError, KeyError):
                assert time.monotonic() < deadline, "the runtime did not become ready"
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.communicate(timeout=30)
        self.process = None

    def ca_bundle(self) -> str:
        """The CA the runtime keeps in its TLS Secret (KeyError until it has created it)."""
        secret = self.api.get("v1", "secrets", self.namespace, self.secret_name)
        if secret is None:
            raise KeyError(self.secret_name)
        return base64.b64decode(secret["data"]["ca.crt"]).decode()

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_bundle())

    def post(self, path: str, body: bytes) -> Any:
        request = urllib.request.Request(
            self.base + path, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=self.client_context(), timeout=10) as answer:
            return json.loads(answer.read())


@pytest.fixture
def runtime(api_server: apiserver.APIServer, tmp_path: pathlib.Path) -> Iterator[Runtime]:
    service = Runtime(api_server, tmp_path)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return result


def test_end_to_end(
    runtime: Runtime, api_server: apiserver.APIServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # admission of the seed's Pod (in the namespace the seed's azRules allow)
    pod = seed_pod()
    pod["metadata"]["namespace"] = "myns"
    pod["spec"]["serviceAccountName"] = "app"
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e2e-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "myns",
            "object": pod,
        },
    }
    answer = runtime.post("/mutate/aws", json.dumps(review).encode())
    assert answer["response"]["uid"] == "e2e-1" and answer["response"]["allowed"] is True
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(answer["response"]["patch"])))
    for version in ("1.29", "1.31", "1.33"):
        kubernetes_validate.validate(patched, version, strict=True)
    [side] = [c for c in patched["spec"]["initContainers"] if c["name"] == "kube-sts-aws"]
    [app] = patched["spec"]["containers"]
    # the sidecar trusts the CA the runtime created, and so does the API server (caBundle)
    assert runtime.ca_bundle() == {e["name"]: e["value"] for e in side["env"]}["KUBE_STS_CA"]
    for name in runtime.webhook_configurations:
        stored_webhook = api_server.get("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "", name)
        assert stored_webhook is not None
        for hook in stored_webhook["webhooks"]:
            assert base64.b64decode(hook["clientConfig"]["caBundle"]).decode() == runtime.ca_bundle()

    # the Pod's files, mapped into the temp directory; the Service URL mapped to the local port
    stored = api_server.add_pod("myns", "aws-test-python-simple-1")
    sa_token = api_server.issue_token("myns", "app", pod=stored, audiences=["kube-sts"])
    mapped = tmp_path / "pod"

    def local(value: str) -> str:
        value = value.replace("https://kube-sts.kube-sts.svc", runtime.base)
        return value.replace("/var/run/secrets/", f"{mapped}/") if value.startswith("/var/run/") else value

    for mount in side["volumeMounts"]:
        pathlib.Path(local(mount["mountPath"])).mkdir(parents=True)
    sa_file = pathlib.Path(local(side["args"][side["args"].index("--service-account-token") + 1]))
    sa_file.write_text(sa_token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({e["name"]: e["value"] for e in side["env"]})
    bin_dir = pathlib.Path(sys.executable).parent
    command = [str(bin_dir / side["command"][0]), *map(local, side["args"])]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    token_file = pathlib.Path(local(dict(zip(side["args"], side["args"][1:], strict=False))["--token-file"]))
    probe = [
        str(bin_dir / side["startupProbe"]["exec"]["command"][0]),
        *map(local, side["startupProbe"]["exec"]["command"][1:]),
    ]
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(probe, check=False).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, "no token"
            time.sleep(0.1)
        assert oct(token_file.stat().st_mode & 0o777) == "0o644"
        token = token_file.read_text()
        minted = claims(token)
        assert minted["sub"] == "kubernetes:myns:app" and minted["aud"] == "sts.aws.com"

        # botocore with the application container's variables against the STS double
        with awssts.AWSSTS() as sts:
            sts.add_provider(
                awssts.Provider(minted["iss"], ("sts.aws.com",), runtime.base + "/aws", runtime.client_context())
            )
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
