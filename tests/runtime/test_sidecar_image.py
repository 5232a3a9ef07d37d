"""The sidecar image: the configured one, else the runtime's own Pod's (``server.resolve_sidecar_image``;
the real API server case is tests/controlplane/test_gitops.py)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from harness import runtime as harness
from kube_sts.runtime import config, server
from kube_sts.runtime.kube import api as kubeapi


def _runtime(**changes: Any) -> config.RuntimeConfig:
    return harness.runtime_config(harness.endpoint()).model_copy(update=changes)


def test_a_configured_image_is_kept_without_reading_the_pod() -> None:
    runtime = _runtime(sidecar_image="registry.example/other:1")
    assert server.resolve_sidecar_image(runtime, cast(kubeapi.KubeAPI, None), {}) is runtime


def test_without_image_or_pod_name_the_runtime_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="POD_NAME"):
        server.resolve_sidecar_image(_runtime(sidecar_image=None), cast(kubeapi.KubeAPI, None), {})
