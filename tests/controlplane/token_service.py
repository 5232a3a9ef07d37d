"""A token service run in the test process on real uvicorn with TLS (``harness.runtime.RunningServer``),
reading the real API server as the rendered ServiceAccount, and the calls a relying-party test makes
to it: tokens minted for a Pod of ServiceAccount ``app`` in ``myns``, its documents, forged tokens."""

from __future__ import annotations

import base64
import contextlib
import json
import pathlib
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from harness import runtime as harness
from kube_sts.runtime import config
from kube_sts.runtime.kube import api as kubeapi
from tests.controlplane import cluster


class Service:
    """The running token service plus what a test needs to call it."""

    def __init__(
        self, running: harness.RunningServer, tls: harness.TLSFiles, plane: cluster.ControlPlane, pod: dict[str, Any]
    ) -> None:
        self.running = running
        self.app = running.app
        self.tls = tls
        self.plane = plane
        self.pod = pod
        self.context = tls.client_context()
        self.algorithm = running.app.runtime.endpoints[0].token.algorithm

    @property
    def endpoint_base(self) -> str:
        """Where the ``aws`` issuer's documents are served: stands in for https://issuer.example."""
        return f"{self.running.url}/aws"

    def get(self, path: str) -> tuple[Any, Any]:
        with urllib.request.urlopen(self.running.url + path, context=self.context, timeout=10) as response:
            return json.loads(response.read()), response.headers

    def mint(self, endpoint: str = "aws") -> str:
        """A token from ``POST /<endpoint>/token``, for a Pod of service account ``app`` in ``myns``."""
        sa_token = self.plane.token("myns", "app", harness.STS_AUDIENCE, pod=self.pod)
        request = urllib.request.Request(
            f"{self.running.url}/{endpoint}/token", method="POST", headers={"Authorization": f"Bearer {sa_token}"}
        )
        with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
            body = json.loads(response.read())
        return str(body["token"])

    def age_tokens(self, seconds: int) -> None:
        """Tokens minted from now on look ``seconds`` old (lifetime one hour)."""
        for state in self.app.endpoints.values():
            state.minter.clock = lambda: time.time() - seconds


@contextlib.contextmanager
def serve(
    runtime: config.RuntimeConfig,
    kube: kubeapi.KubeAPI,
    keys_dir: pathlib.Path,
    tls: harness.TLSFiles,
    plane: cluster.ControlPlane,
    pod: dict[str, Any],
) -> Iterator[Service]:
    """``runtime`` with the key sets in ``keys_dir``, served on 127.0.0.1 with ``tls`` until the block ends."""
    app = harness.make_app(runtime, kube, keys_dir)
    with harness.RunningServer(app, tls) as running:
        yield Service(running, tls, plane, pod)


def tamper(token: str) -> str:
    """``token`` with its ``namespace`` claim changed to ``kube-system`` and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["namespace"] = "kube-system"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"
