"""Hostile clients against a token service on loopback, shared by the adversarial tests and
``bench/hostile.py``: probes, header floods, connections that never finish a request."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import os
import pathlib
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import yaml

from harness import apiserver
from harness.runtime import free_port, server_command, write_kubeconfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
VALUES = ROOT / "examples" / "aws" / "values.yaml"
HOST = "127.0.0.1"


class Runtime:
    """``kube-sts-server`` for the compiled AWS example (runtime TLS mode, "localhost" added to its
    names) against the API server double ``api``: the HTTP layer under attack, Kubernetes not under test."""

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
        image = None
        for manifest in sorted(out.glob("*.yaml")):
            document = yaml.safe_load(manifest.read_text())
            if document["kind"] == "MutatingWebhookConfiguration":
                api.put(document)
                self.webhook_configurations.append(document["metadata"]["name"])
            if document["kind"] == "Deployment":
                image = document["spec"]["template"]["spec"]["containers"][0]["image"]
        [configmap] = out.glob("*-configmap-*-config.yaml")
        runtime_config = json.loads(yaml.safe_load(configmap.read_text())["data"]["config.json"])
        # No Pod of its own here to read its image from: pinned, as sts.sidecarImage does.
        runtime_config["sidecarImage"] = runtime_config.get("sidecarImage") or image
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
        kubeconfig = write_kubeconfig(tmp / "kubeconfig", api.url)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "AWS_"))}
        self.env.update({"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)})
        self.keys = tmp / "keys"
        self.port = free_port()
        self.base = f"https://localhost:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        command = server_command(
            self.config_file, keys_dir=self.keys, tls_dir=self.config_file.parent / "no-tls-files", port=self.port
        )
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


@contextlib.contextmanager
def runtime_process(tmp: pathlib.Path) -> Iterator[Runtime]:
    """The real ``kube-sts-server`` (compiled AWS example, runtime TLS mode) with an API double."""
    with apiserver.APIServer() as api:
        service = Runtime(api, tmp)
        service.start()
        try:
            yield service
        finally:
            service.stop()


def readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data or an end of stream waiting (``poll``: any descriptor number)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def pid(runtime: Runtime) -> int:
    assert runtime.process is not None
    return runtime.process.pid


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def tls_connect(context: ssl.SSLContext, port: int, timeout: float = 10.0) -> ssl.SSLSocket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    return context.wrap_socket(sock, server_hostname="localhost")


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """The server's first response (by its Content-Length), or what came before it closed or
    ``timeout`` passed."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
            head, separator, body = data.partition(b"\r\n\r\n")
            if separator:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(body) >= int(value):
                        return data
    return data


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get(context: ssl.SSLContext, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with tls_connect(context, port, timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        return status_and_body(read_answer(sock, timeout))


class Prober(threading.Thread):
    """``GET /healthz`` on a new TLS connection every ``interval`` seconds, as the kubelet does."""

    def __init__(self, context: ssl.SSLContext, port: int, interval: float = 0.1, timeout: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.context, self.port, self.interval, self.timeout = context, port, interval, timeout
        self.latencies: list[float] = []
        self.failures = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.perf_counter()
            try:
                status, _ = get(self.context, self.port, "/healthz", self.timeout)
                ok = status == 200
            except (OSError, ValueError, IndexError):
                ok = False
            elapsed = time.perf_counter() - started
            self.latencies.append(elapsed)
            self.failures += not ok
            self.done.wait(max(0.0, self.interval - elapsed))

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.join()
        return {"probes": len(self.latencies), "failed": self.failures, "max_s": max(self.latencies, default=0.0)}


def header_flood(
    context: ssl.SSLContext, port: int, total: int, *, header: bytes = b"x: 0123456789a\r\n", timeout: float = 120.0
) -> tuple[int, bytes, int]:
    """One request whose header block is ``total`` bytes of ``header`` repeats (16 bytes each by
    default; a single huge header when ``header`` is empty). Returns the status, the body and how
    many bytes were sent when the server answered (or closed)."""
    request_line = b"POST /aws/token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
    block = header * (total // len(header)) if header else b"x-big: " + b"a" * total + b"\r\n"
    payload = request_line + block + b"\r\n"
    sent = 0
    early = b""
    with tls_connect(context, port, timeout) as sock:
        view = memoryview(payload)
        try:
            while sent < len(payload):
                sent += sock.send(view[sent : sent + 65536])
                answer = answer_of(sock)
                if answer is not None:
                    early = answer
                    break
        except (ConnectionError, ssl.SSLError):
            pass
        sock.settimeout(timeout)
        answer = early + (read_answer(sock, timeout) if early.count(b"\r\n\r\n") == 0 else b"")
    if not answer:
        return 0, b"", sent
    status, body = status_and_body(answer)
    return status, body, sent


def stalled_connections(context: ssl.SSLContext | None, port: int, count: int, workers: int = 8) -> list[socket.socket]:
    """``count`` connections that never finish a request: with ``context``, a TLS handshake and
    half a request line; without, TCP connections that never start their handshake. Opened by
    ``workers`` threads at once (a flood arrives faster than one client's handshakes)."""

    def one(_: int) -> socket.socket | None:
        sock = socket.create_connection((HOST, port), timeout=30)
        if context is None:
            return sock
        try:
            tls = context.wrap_socket(sock, server_hostname="localhost")
            tls.sendall(b"POST /aws/token HTTP/1.1\r\nHost: local")
        except (ConnectionError, ssl.SSLError, TimeoutError):
            sock.close()
            return None
        return tls

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [sock for sock in pool.map(one, range(count)) if sock is not None]


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a TLS handshake with ``context``: the ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        handshake.do_handshake()
    return outgoing.read()


def stalled_handshakes(context: ssl.SSLContext, port: int, count: int, *, whole: bool) -> list[socket.socket]:
    """``count`` TCP connections that start a TLS handshake and stop: after half the ClientHello,
    or (``whole``) after all of it, never answering the server's flight."""
    hello = client_hello(context)
    sent = hello if whole else hello[: len(hello) // 2]
    held = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=30)
        sock.sendall(sent)
        held.append(sock)
    return held


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` (end of stream or reset) within ``timeout`` seconds;
    what it sends first (its handshake flight) is read and dropped."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def answer_of(sock: socket.socket) -> bytes | None:
    """``None`` while the server neither answered nor closed ``sock``, else what it sent (``b""``
    for a bare close). Reads without blocking; TLS session tickets are not an answer."""
    if sock.fileno() < 0:
        return b""
    if not readable(sock) and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return None
    if not isinstance(sock, ssl.SSLSocket):
        return b""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except ssl.SSLWantReadError:
        return None
    except OSError:
        return b""
    finally:
        if sock.fileno() >= 0:
            sock.settimeout(30)
    return data


def still_open(sockets: list[socket.socket], answers: dict[int, bytes] | None = None) -> int:
    """How many of ``sockets`` the server has neither answered nor closed; the answers of the
    others are kept in ``answers`` by index."""
    answers = {} if answers is None else answers
    open_count = 0
    for index, sock in enumerate(sockets):
        if index in answers:
            continue
        answer = answer_of(sock)
        if answer is None:
            open_count += 1
        else:
            answers[index] = answer
    return open_count
