"""Fixtures of the control-plane tier: one real kube-apiserver + etcd for the whole tier, with the
compiled AWS example applied, and the runtime as a process authenticated as its rendered
ServiceAccount. Each test uses namespaces of its own, or ``myns``, the namespace the examples'
azRules admit. ``runtime_kube`` is the runtime's Kubernetes client for token services run in the
test process: the real API server, as the rendered ServiceAccount."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import pytest

from harness import runtime as harness
from kube_sts.runtime.kube import api as kubeapi
from tests.controlplane import cluster, deployment

ALLOWED = "myns"
WATCH_SECONDS = 5
"""``tls.watchSeconds`` of the session's runtime: its watch of the webhook configuration is renewed
every few seconds, as a long-running replica's is every 240 s."""


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.ControlPlane]:
    plane = cluster.ControlPlane(tmp_path_factory.mktemp("controlplane")).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def deployed(control_plane: cluster.ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> deployment.Deployment:
    """The AWS example compiled and applied with kubectl (no runtime running yet)."""
    return deployment.Deployment.apply(control_plane, deployment.EXAMPLES / "aws", tmp_path_factory.mktemp("aws"))


@pytest.fixture(scope="session")
def runtime(deployed: deployment.Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[deployment.Runtime]:
    """The runtime serving the compiled webhook at the Service's ClusterIP, as ServiceAccount kube-sts."""
    process = deployed.runtime(tmp_path_factory.mktemp("runtime"), at_cluster_ip=True, watch_seconds=WATCH_SECONDS)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> harness.TLSFiles:
    """A throw-away CA and a serving certificate for 127.0.0.1, for token services in the test process."""
    return harness.make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def runtime_kube(deployed: deployment.Deployment) -> Iterator[kubeapi.KubeAPI]:
    """A ``KubeAPI`` on the real API server with a TokenRequest token of ServiceAccount kube-sts."""
    plane = deployed.plane
    account = deployed.one("ServiceAccount")["metadata"]["name"]
    token = plane.token(deployed.namespace, account, cluster.API_AUDIENCE, seconds=24 * 3600)
    client = kubeapi.KubeAPI.for_host(plane.url, token=token, ca_file=str(plane.ca_file), timeout=5.0)
    yield client
    client.close()


@pytest.fixture(scope="session")
def admin_kube(control_plane: cluster.ControlPlane) -> Iterator[kubeapi.KubeAPI]:
    """The runtime's client class with the admin kubeconfig (client certificate in system:masters)."""
    client = control_plane.admin_api()
    yield client
    client.close()


@pytest.fixture(scope="session")
def myns(control_plane: cluster.ControlPlane) -> str:
    """``myns`` (with ServiceAccounts ``default`` and ``app``): the namespace the azRules admit."""
    control_plane.create_namespace(ALLOWED)
    return ALLOWED


@pytest.fixture(scope="session")
def denied(control_plane: cluster.ControlPlane) -> str:
    """``denied`` (with ServiceAccounts ``default`` and ``app``): a namespace the azRules do not admit."""
    control_plane.create_namespace("denied")
    return "denied"


@pytest.fixture
def plane(control_plane: cluster.ControlPlane, myns: str) -> cluster.ControlPlane:
    """The session's control plane, with ``myns`` created."""
    return control_plane


@pytest.fixture
def namespace(control_plane: cluster.ControlPlane, request: pytest.FixtureRequest) -> str:
    """A namespace of the test's own, with the ServiceAccounts ``default`` and ``app``."""
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:50].strip("-")
    control_plane.create_namespace(name)
    return name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = pathlib.Path(__file__).parent
    for item in items:
        if pathlib.Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.controlplane)
