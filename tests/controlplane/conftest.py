"""Fixtures of the control-plane tier: one real kube-apiserver + etcd for the whole tier, with the
compiled AWS example applied, and the runtime as a process authenticated as its rendered
ServiceAccount. Each test uses namespaces of its own."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import pytest

from tests.controlplane import cluster, deployment


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
    process = deployed.runtime(tmp_path_factory.mktemp("runtime"), at_cluster_ip=True)
    process.start()
    try:
        yield process
    finally:
        process.stop()


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
