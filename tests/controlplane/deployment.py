"""A compiled example applied to the real control plane, and the runtime as a process beside it.

The runtime runs as the rendered ServiceAccount: its kubeconfig holds a TokenRequest token for
``kube-sts/kube-sts``, so the rendered ClusterRoles and Roles are all it gets. Its config is the
rendered ConfigMap as the API server stores it. With ``at_cluster_ip`` it listens on the
Service's ClusterIP and port (inside the loopback Service CIDR), where the API server calls the
compiled MutatingWebhookConfiguration.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import json
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import time
from typing import Any

import jsonpatch
import kubernetes_validate
import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness import reviews
from harness import runtime as harness
from tests.controlplane import cluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def compile_example(example: pathlib.Path, out: pathlib.Path) -> str:
    """``sts-compile`` of an example's values file: the manifest stream, and one file per object in ``out``."""
    command = [sys.executable, "-m", "kube_sts.compiler.cli"]
    subprocess.run([*command, "--output-dir", str(out), str(example / "values.yaml")], check=True, cwd=ROOT, timeout=60)
    stream = subprocess.run(
        [*command, str(example / "values.yaml")], check=True, cwd=ROOT, timeout=60, capture_output=True, text=True
    )
    return stream.stdout


@dataclasses.dataclass
class Deployment:
    plane: cluster.ControlPlane
    manifests: str
    documents: list[dict[str, Any]]

    @classmethod
    def apply(cls, plane: cluster.ControlPlane, example: pathlib.Path, directory: pathlib.Path) -> Deployment:
        stream = compile_example(example, directory / "manifests")
        plane.kubectl("apply", "-f", "-", input=stream)
        return cls(plane, stream, [d for d in yaml.safe_load_all(stream) if d])

    def one(self, kind: str) -> dict[str, Any]:
        [document] = [d for d in self.documents if d["kind"] == kind]
        return document

    @property
    def namespace(self) -> str:
        name: str = self.one("Namespace")["metadata"]["name"]
        return name

    def runtime_config(self) -> dict[str, Any]:
        stored = self.plane.get("configmap", self.one("ConfigMap")["metadata"]["name"], self.namespace)
        assert stored is not None
        config: dict[str, Any] = json.loads(stored["data"]["config.json"])
        return config

    def service_address(self) -> tuple[str, int]:
        stored = self.plane.get("service", self.one("Service")["metadata"]["name"], self.namespace)
        assert stored is not None
        return stored["spec"]["clusterIP"], stored["spec"]["ports"][0]["port"]

    def runtime(
        self,
        directory: pathlib.Path,
        *,
        at_cluster_ip: bool = False,
        watch_seconds: int | None = None,
    ) -> Runtime:
        """A runtime process for this deployment; ``watch_seconds`` sets ``tls.watchSeconds`` (how
        often its watch of the webhook configurations is renewed)."""
        account = self.one("ServiceAccount")["metadata"]["name"]
        token = self.plane.token(self.namespace, account, cluster.API_AUDIENCE, seconds=24 * 3600)
        kubeconfig = self.plane.kubeconfig_for(f"runtime-{directory.name}", token)
        host, port = self.service_address() if at_cluster_ip else ("127.0.0.1", harness.free_port())
        pod = self.runtime_pod(directory.name)
        return Runtime(self, directory, kubeconfig, host, port, pod=pod, watch_seconds=watch_seconds)

    def runtime_pod(self, suffix: str) -> str:
        """A Pod of the stored Deployment's template (no controller makes it, no kubelet runs it):
        the runtime process stands for it (``POD_NAME``) and reads its own image from it."""
        stored = self.plane.get("deployment", self.one("Deployment")["metadata"]["name"], self.namespace)
        assert stored is not None
        template = stored["spec"]["template"]
        name = f"{stored['metadata']['name']}-{hashlib.sha256(suffix.encode()).hexdigest()[:10]}"
        if self.plane.get("pod", name, self.namespace) is None:
            metadata = {**template["metadata"], "name": name, "namespace": self.namespace}
            self.plane.apply({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
        return name


class Runtime:
    """``kube-sts-server`` with the stored config, authenticated as the rendered ServiceAccount."""

    def __init__(
        self,
        deployment: Deployment,
        directory: pathlib.Path,
        kubeconfig: pathlib.Path,
        host: str,
        port: int,
        *,
        pod: str,
        watch_seconds: int | None = None,
    ) -> None:
        self.deployment = deployment
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host, self.port = host, port
        config = deployment.runtime_config()
        for endpoint in config["endpoints"]:
            # the examples' issuer hosts (CloudFront) cannot be reached from here: without this a
            # first start signs nothing until https://<host>/certs serves the key
            endpoint["issuer"]["keys"]["waitForPublication"] = False
        # "localhost": the loopback stand-in for the Service's DNS name, for clients that dial the
        # runtime by name (the sidecar in test_end_to_end.py). Every runtime of the tier adds it, so
        # that runtimes sharing the TLS Secret agree on the serving certificate's names.
        config["tls"]["dnsNames"].append("localhost")
        if watch_seconds is not None:
            config["tls"]["watchSeconds"] = watch_seconds
        self.config = config
        self.config_file = directory / "config.json"
        self.config_file.write_text(json.dumps(config))
        self.service_name = f"{deployment.one('Service')['metadata']['name']}.{deployment.namespace}.svc"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AWS_"))}
        self.env.update({"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)})
        self.env.update({"POD_NAME": pod, "POD_NAMESPACE": deployment.namespace})
        self.pod = pod
        self.process: subprocess.Popen[bytes] | None = None
        self.base = f"https://{host}:{port}"

    def start(self, *, wait: bool = True) -> None:
        command = harness.server_command(
            self.config_file,
            keys_dir=self.directory / "no-mounted-keys",
            tls_dir=self.directory / "no-mounted-tls",
            host=self.host,
            port=self.port,
            log_level="info",
        )
        self.log = self.directory / "runtime.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()
            try:
                status, _ = self.get("/readyz")
                if status == 200:
                    return
            except (OSError, AssertionError, http.client.HTTPException):
                pass
            assert time.monotonic() < deadline, f"the runtime did not become ready:\n{self.log.read_text()[-4000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    # -- what the API server holds --------------------------------------------------------------

    def secret(self, name: str) -> dict[str, bytes] | None:
        stored = self.deployment.plane.get("secret", name, self.deployment.namespace)
        if stored is None:
            return None
        return {key: base64.b64decode(value) for key, value in stored.get("data", {}).items()}

    def ca_bundles(self) -> list[bytes]:
        """The caBundle of every webhook of the compiled configurations, read back from the API server."""
        bundles = []
        for document in self.deployment.documents:
            if document["kind"] == "MutatingWebhookConfiguration":
                stored = self.deployment.plane.get("mutatingwebhookconfiguration", document["metadata"]["name"])
                assert stored is not None
                bundles += [base64.b64decode(hook["clientConfig"].get("caBundle", "")) for hook in stored["webhooks"]]
        return bundles

    def client_context(self) -> ssl.SSLContext:
        """A TLS client that trusts only the caBundle the API server holds for our webhooks."""
        bundles = set(self.ca_bundles())
        assert len(bundles) == 1 and b"" not in bundles, bundles
        return ssl.create_default_context(cadata=bundles.pop().decode())

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One HTTPS request, the certificate checked for the Service's name as the API server does."""
        connection = ServiceConnection(self.host, self.port, self.service_name, self.client_context())
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            data = answer.read()
            if "json" in (answer.getheader("Content-Type") or ""):
                return answer.status, json.loads(data)
            return answer.status, data.decode()
        finally:
            connection.close()

    def admission_reviews(self) -> float:
        """How many requests the runtime has answered on its webhook routes (from /metrics)."""
        status, text = self.get("/metrics")
        assert status == 200
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "kube_sts_http_requests_total" and "mutate" in sample.labels.get("route", ""):
                    total += sample.value
        return total

    def gauge(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The samples of one of the runtime's gauges (from /metrics), by their labels."""
        status, text = self.get("/metrics")
        assert status == 200
        return {
            tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        }

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return self.request("POST", path, body, headers)


class ServiceConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, server_name: str, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=15, context=context)
        self._server_name, self._tls = server_name, context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


def admit(runtime: Runtime, endpoint: str, pod: dict[str, Any], uid: str) -> dict[str, Any]:
    """``pod`` as the runtime's ``POST /mutate/<endpoint>`` patches it (an AdmissionReview with
    ``uid``, in the Pod's namespace), the patch applied with jsonpatch and the result validated
    strictly against the Kubernetes schemas."""
    body = reviews.review_body(pod, uid=uid, namespace=pod["metadata"]["namespace"])
    status, answer = runtime.post(f"/mutate/{endpoint}", body, {"Content-Type": "application/json"})
    assert status == 200, answer
    assert answer["response"]["uid"] == uid and answer["response"]["allowed"] is True, answer
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(answer["response"]["patch"])))
    for version in ("1.29", "1.31", "1.33"):
        kubernetes_validate.validate(patched, version, strict=True)
    return patched


class InjectedSidecar:
    """The sidecar container ``side`` of a patched Pod, run as a process of the test as the kubelet
    would: the Pod's files (every ``/var/run/secrets/`` path, also inside its variables) mapped
    under ``directory``, the Service's URL mapped to ``runtime``'s local port, the ServiceAccount
    token ``sa_token`` in its projected file. ``start`` returns once its startup probe passes."""

    def __init__(self, runtime: Runtime, side: dict[str, Any], directory: pathlib.Path, sa_token: str) -> None:
        self.base = f"https://localhost:{runtime.port}"
        self.directory = directory
        for mount in side["volumeMounts"]:
            pathlib.Path(self.local(mount["mountPath"])).mkdir(parents=True)
        args = dict(zip(side["args"], side["args"][1:], strict=False))
        pathlib.Path(self.local(args["--service-account-token"])).write_text(sa_token)
        self.token_file = pathlib.Path(self.local(args["--token-file"]))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "KUBE_STS_"))}
        self.env.update({e["name"]: self.local(e["value"]) for e in side["env"]})
        bin_dir = pathlib.Path(sys.executable).parent
        self.command = [str(bin_dir / side["command"][0]), *map(self.local, side["args"])]
        probe = side["startupProbe"]["exec"]["command"]
        self.probe = [str(bin_dir / probe[0]), *map(self.local, probe[1:])]

    def local(self, value: str) -> str:
        """A path or URL of the Pod, as the test's process reaches it."""
        value = value.replace("https://kube-sts.kube-sts.svc", self.base)
        return value.replace("/var/run/secrets/", f"{self.directory}/")

    def start(self, timeout: float = 15) -> subprocess.Popen[str]:
        """The sidecar's process, once its startup probe passes (stopped again if it never does)."""
        process = subprocess.Popen(self.command, env=self.env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + timeout
            while subprocess.run(self.probe, check=False).returncode != 0:
                assert process.poll() is None and time.monotonic() < deadline, "no token"
                time.sleep(0.1)
        except BaseException:
            process.terminate()
            process.communicate(timeout=10)
            raise
        return process
