"""Shared fixtures (the Kubernetes API server double and a client bound to it) and the run order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import apiserver
from kube_sts.runtime.kube import api as kubeapi


@pytest.fixture
def api_server() -> Iterator[apiserver.APIServer]:
    """A fresh API server double on 127.0.0.1 (plain HTTP), stopped after the test."""
    with apiserver.APIServer() as server:
        yield server


@pytest.fixture
def kube(api_server: apiserver.APIServer) -> Iterator[kubeapi.KubeAPI]:
    """The runtime's Kubernetes client talking to ``api_server``."""
    client = kubeapi.KubeAPI.for_host(api_server.url, token="test-runtime-token", timeout=2.0)
    yield client
    client.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files holding tests marked ``slow`` run first (in their order; the rest keep theirs):
    pytest-xdist hands whole files to whichever worker is free, so a minute-long file handed out
    last would keep one worker busy while the other idles."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)
