"""Shared fixtures: the Kubernetes API server double and a client bound to it."""

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
