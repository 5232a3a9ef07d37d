"""Test helpers for the token service: configs, key sets, a test CA, and the app on real uvicorn.

``RunningServer`` serves an ``App`` on 127.0.0.1 with TLS from a throw-away CA, in a thread of
the test process; ``asgi_call`` drives the ASGI app directly (no sockets) for fast error cases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import io
import ipaddress
import json
import pathlib
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kube_sts.runtime import config, server
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tokens import audit

CLUSTER = "test-cluster"
STS_AUDIENCE = "kube-sts"
ISSUER_HOST = "issuer.example"


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def server_command(
    config_file: pathlib.Path,
    *,
    keys_dir: pathlib.Path,
    tls_dir: pathlib.Path,
    host: str = "127.0.0.1",
    port: int,
    log_level: str = "warning",
) -> list[str]:
    """The command line of ``kube-sts-server`` (the image's entrypoint) from this tree's interpreter."""
    return [
        *(sys.executable, "-m", "kube_sts.runtime.server", "--config", str(config_file)),
        *("--keys-dir", str(keys_dir), "--tls-dir", str(tls_dir)),
        *("--host", host, "--port", str(port), "--log-level", log_level),
    ]


def make_tls(directory: pathlib.Path) -> TLSFiles:
    """A CA and a serving certificate for 127.0.0.1 and localhost, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-sts test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-sts")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def endpoint(
    name: str = "aws",
    *,
    algorithm: str = "RS256",
    rules: Sequence[str] = ("(namespace=myns)",),
    subject: str | None = None,
    session_tags: bool = False,
    audience: str = "sts.amazonaws.com",
    host: str = ISSUER_HOST,
    label: str | None = "aws-role",
    mode: str = "provided",
) -> config.Endpoint:
    document: dict[str, Any] = {
        "name": name,
        "audience": audience,
        "path": f"/{name}",
        "azRules": [{"scope": "filter", "constraint": rule} for rule in rules],
        "issuer": {"host": host, "keypair": f"{name}-keys", "keys": {"mode": mode}},
        "token": {"algorithm": algorithm, "awsSessionTags": session_tags},
    }
    if subject is not None:
        document["token"]["subject"] = subject
    if label is not None:
        document["injector"] = {
            "label": label,
            "token_environment_variable_name": "AWS_WEB_IDENTITY_TOKEN_FILE",
            "label_value_environment_variable_name": "AWS_ROLE_ARN",
        }
    return config.Endpoint.model_validate(document)


def runtime_config(*endpoints: config.Endpoint) -> config.RuntimeConfig:
    return config.RuntimeConfig.model_validate(
        {
            "cluster": CLUSTER,
            "namespace": "kube-sts",
            "serviceUrl": "https://kube-sts.kube-sts.svc",
            "stsAudience": STS_AUDIENCE,
            "sidecarImage": "registry.example/kube-sts:test",
            "sidecarResources": {},
            "tls": {"secretName": "kube-sts-tls", "dnsNames": ["kube-sts.kube-sts.svc"]},
            "endpoints": [e.model_dump(by_alias=True) for e in endpoints],
        }
    )


def write_keyset(keys_dir: pathlib.Path, endpoint_name: str, algorithm: str, count: int = 1) -> keyset.KeySet:
    """A key set whose newest key signs now; older ones are still published."""
    now = int(time.time())
    keys = [
        keyset.generate(
            algorithm, created=now - 3600 * (i + 1), sign_from=now - 3600 * (i + 1), sign_until=now + 86400 - i
        )
        for i in range(count)
    ]
    ks = keyset.KeySet(tuple(keys), endpoint_name)
    path = keys_dir / endpoint_name / keymanager.DATA_KEY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(keyset.dumps(ks))
    return ks


def key_manager(runtime: config.RuntimeConfig, keys_dir: pathlib.Path) -> keymanager.KeyManager:
    manager = keymanager.KeyManager.from_config(runtime, keys_dir=keys_dir, fetcher=None)
    manager.refresh()
    return manager


def make_app(
    runtime: config.RuntimeConfig, kube: kubeapi.KubeAPI, keys_dir: pathlib.Path, **options: Any
) -> server.App:
    """The app with keys from ``keys_dir`` and its audit trail in memory (``audit_lines``)."""
    options.setdefault("audit", audit.AuditTrail(io.StringIO()))
    return server.App(runtime, kube=kube, keys=key_manager(runtime, keys_dir), **options)


def audit_lines(app: server.App) -> list[dict[str, Any]]:
    stream = app.audit.stream
    assert isinstance(stream, io.StringIO)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def asgi_call(
    app: server.App,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    chunks: int = 1,
) -> Answer:
    """One request straight into the ASGI app (``chunks`` splits the body into messages)."""
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8443),
        "scheme": "https",
    }
    size = max(1, -(-len(body) // chunks)) if body else 1
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": index < len(pieces) - 1}
        for index, piece in enumerate(pieces)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}, body_out)


class RunningServer:
    """``app`` on uvicorn with TLS on 127.0.0.1 (a free port), in a background thread."""

    def __init__(self, app: server.App, tls: TLSFiles | None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.tls = tls
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        context = ssl_context or (tls.server_context() if tls is not None else None)
        self.server = server.uvicorn_server(
            app, host="127.0.0.1", port=self.port, ssl_context=context, log_level="warning"
        )
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(path: pathlib.Path, server_url: str) -> pathlib.Path:
    """A kubeconfig for a runtime process that talks to the API server double at ``server_url``."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "double", "cluster": {"server": server_url}}],
                "users": [{"name": "sts", "user": {"token": "runtime-token"}}],
                "contexts": [{"name": "double", "context": {"cluster": "double", "user": "sts"}}],
                "current-context": "double",
            }
        )
    )
    return path
