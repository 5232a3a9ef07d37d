"""A real Kubernetes control plane on loopback: etcd and kube-apiserver, no kubelet, no controllers.

``ControlPlane.start(directory)`` generates a CA, the API server's serving certificate, an admin
client certificate in ``system:masters`` and the service-account signing key, starts etcd on a
fresh data directory and kube-apiserver on free ports, and waits for ``/readyz``.

The Service CIDR lies inside 127.0.0.0/8 (``service_network``, one per control plane of the run): the API
server dials a webhook's ``clientConfig.service`` at the Service's ClusterIP and port itself (no
kube-proxy), so a runtime listening on that loopback address is reached through the compiled
MutatingWebhookConfiguration unchanged.

What a cluster without controllers lacks (tests create what they use): no ``default``
ServiceAccount, no ``kube-root-ca.crt``, Deployments get no Pods, deleted Namespaces stay
Terminating. The API server caches successful TokenReviews for 10 seconds.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import itertools
import json
import os
import pathlib
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import kubernetes
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import runtime as harness
from kube_sts.runtime.kube import api as kubeapi
from tests.controlplane import binaries

_planes = itertools.count()


def _service_network() -> ipaddress.IPv4Network:
    """A Service CIDR no other control plane of this test run has: ``127.<10+k>.<n>.0/24`` for the
    k-th control plane of pytest-xdist worker ``gw<n>`` (``n`` = 0 outside xdist). Runtimes listen
    on their Services' ClusterIPs on this host, so two clusters (two workers', or a throw-away
    plane beside the session's) must never hand out the same address."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    return ipaddress.IPv4Network(f"127.{10 + next(_planes) % 240}.{worker % 256}.0/24")


STATIC_CLUSTER_IPS = {"mesh": 14, "openunison": 13}
"""ClusterIPs tests set themselves, as offsets in the CIDR's static band (its first 16 addresses):
the API server allocates the ClusterIPs it picks from the band above first (KEP-3070), so a fixed
address there could already belong to a Service whose runtime listens on it."""
# The issuer and audience of the API server's own service-account tokens.
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def _write(path: pathlib.Path, data: bytes, mode: int = 0o600) -> pathlib.Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclasses.dataclass(frozen=True)
class _CA:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str) -> _CA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(
        self, subject: x509.Name, *, client: bool, dns: Sequence[str] = (), ips: Sequence[str] = ()
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def write_kubeconfig(path: pathlib.Path, server: str, ca_file: pathlib.Path, user: dict[str, str]) -> pathlib.Path:
    """A kubeconfig for one user (``token`` or ``client-certificate``/``client-key`` paths)."""
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "loopback", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "user"}}],
        "current-context": "loopback",
    }
    return _write(path, json.dumps(document).encode())  # JSON is YAML


class ControlPlane:
    """etcd and kube-apiserver as child processes, with an admin kubeconfig and helpers."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.service_network = _service_network()
        self.binaries = binaries.ensure()
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._admin_api: kubeapi.KubeAPI | None = None
        ca = _CA.create("kube-sts control-plane CA")
        self.ca_file = _write(directory / "ca.crt", ca.certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        serving_cert, serving_key = ca.issue(
            _name("kube-apiserver"),
            client=False,
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=("127.0.0.1", str(self.service_network[1])),
        )
        self._serving = (
            _write(directory / "apiserver.crt", serving_cert),
            _write(directory / "apiserver.key", serving_key),
        )
        admin_cert, admin_key = ca.issue(_name("kube-sts-admin", "system:masters"), client=True)
        self._admin = (_write(directory / "admin.crt", admin_cert), _write(directory / "admin.key", admin_key))
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._sa_key = _write(directory / "sa.key", _key_pem(sa_key))
        self._sa_pub = _write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        self.port = harness.free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = write_kubeconfig(
            directory / "admin.kubeconfig",
            self.url,
            self.ca_file,
            {"client-certificate": str(self._admin[0]), "client-key": str(self._admin[1])},
        )

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.directory / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._processes.append((name, process))

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def start(self) -> ControlPlane:
        etcd_client, etcd_peer = harness.free_port(), harness.free_port()
        data = self.directory / "etcd"
        data.mkdir(mode=0o700)
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=controlplane",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=controlplane=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.directory / 'apiserver-certs'}",
                f"--tls-cert-file={self._serving[0]}",
                f"--tls-private-key-file={self._serving[1]}",
                f"--client-ca-file={self.ca_file}",
                f"--service-account-key-file={self._sa_pub}",
                f"--service-account-signing-key-file={self._sa_key}",
                f"--service-account-issuer={API_AUDIENCE}",
                f"--api-audiences={API_AUDIENCE}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={self.service_network}",
                "--profiling=false",
            ],
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 90) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self._admin[0]), str(self._admin[1]))
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", context=context, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready after {timeout} s:\n{self.log('kube-apiserver')[-4000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self._admin_api is not None:
            self._admin_api.close()
            self._admin_api = None
        for _name, process in reversed(self._processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:  # a throwaway cluster: its graceful shutdown is not worth waiting for long
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self._processes.clear()

    # -- clients --------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, kubeconfig: pathlib.Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.binaries.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def get(self, resource: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """The stored object, or None when the API server has none of that name."""
        scope = [f"--namespace={namespace}"] if namespace else []
        answer = self.kubectl("get", resource, name, *scope, "-o", "json", "--ignore-not-found")
        found: dict[str, Any] | None = json.loads(answer.stdout) if answer.stdout.strip() else None
        return found

    def static_ip(self, name: str) -> str:
        """The ClusterIP a test's own Service ``name`` of ``STATIC_CLUSTER_IPS`` takes in this cluster."""
        return str(self.service_network[STATIC_CLUSTER_IPS[name]])

    def apply(self, *documents: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}))

    def token(
        self,
        namespace: str,
        service_account: str,
        audience: str,
        *,
        pod: dict[str, Any] | None = None,
        seconds: int = 600,
    ) -> str:
        """A TokenRequest for ``service_account``, bound to ``pod`` when given (what ``kubectl create
        token`` sends, without a process per token)."""
        spec: dict[str, Any] = {"audiences": [audience], "expirationSeconds": seconds}
        if pod is not None:
            metadata = pod["metadata"]
            spec["boundObjectRef"] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": metadata["name"],
                "uid": metadata["uid"],
            }
        if self._admin_api is None:
            self._admin_api = self.admin_api()
        answer = self._admin_api.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        token: str = answer["status"]["token"]
        return token

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A Namespace with the ServiceAccounts ``default`` and ``app`` (no controller makes them)."""
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}},
            *(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": name}}
                for account in ("default", "app")
            ),
        )

    def admin_api(self, timeout: float = 5.0) -> kubeapi.KubeAPI:
        """The runtime's client class with the admin kubeconfig (client certificate in system:masters)."""
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        configuration.retries = False
        return kubeapi.KubeAPI(kubernetes.client.ApiClient(configuration), timeout)

    def kubeconfig_for(self, name: str, token: str) -> pathlib.Path:
        return write_kubeconfig(self.directory / f"{name}.kubeconfig", self.url, self.ca_file, {"token": token})
