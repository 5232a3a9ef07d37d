"""The STS audience is never one the API server accepts: the compiler and the runtime refuse it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pydantic
import pytest

from harness import runtime as harness
from kube_sts.compiler import diagnostics, source
from kube_sts.runtime import config
from tests.compiler.values_files import aws_values

ROOT = pathlib.Path(__file__).resolve().parents[2]

GOOD = aws_values(injector=False)

API_AUDIENCES = [
    "https://kubernetes.default.svc.cluster.local",
    "https://kubernetes.default.svc",
    "kubernetes",
    "https://Kubernetes.default.svc.cluster.local/",
    "https://kubernetes.default",
]


@pytest.mark.parametrize("audience", API_AUDIENCES)
def test_compiler_refuses_an_api_server_audience(audience: str) -> None:
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(GOOD + f'  stsAudience: "{audience}"\n')
    found = [(d.line, d.column, d.code, d.path) for d in caught.value.diagnostics]
    assert found == [(12, 16, "invalid-value", "sts.stsAudience")]
    assert "audience of the Kubernetes API server" in caught.value.diagnostics[0].message


def test_compiler_refuses_the_clusters_configured_api_audiences() -> None:
    text = (
        GOOD
        + "  apiAudiences: [https://oidc.example.com/cluster-1]\n  stsAudience: https://oidc.example.com/cluster-1\n"
    )
    with pytest.raises(diagnostics.ValuesError) as caught:
        source.parse(text)
    assert [(d.line, d.column, d.code) for d in caught.value.diagnostics] == [(13, 16, "invalid-value")]
    source.parse(GOOD + "  apiAudiences: [https://oidc.example.com/cluster-1]\n  stsAudience: kube-sts\n")


def _runtime_document(audience: str) -> dict[str, object]:
    document: dict[str, object] = json.loads(harness.runtime_config(harness.endpoint()).model_dump_json(by_alias=True))
    document["stsAudience"] = audience
    return document


@pytest.mark.parametrize("audience", API_AUDIENCES)
def test_runtime_config_refuses_an_api_server_audience(audience: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="audience of the Kubernetes API server"):
        config.RuntimeConfig.model_validate(_runtime_document(audience))


def test_runtime_refuses_to_start_with_one_clear_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_runtime_document("https://kubernetes.default.svc")))
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.runtime.server", "--config", str(path)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "KUBECONFIG": str(tmp_path / "none")},
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"kube-sts-server: cannot load {path}: stsAudience: ")
    assert "audience of the Kubernetes API server" in lines[0]
