"""Snapshots of every example's output, the checked-in JSON Schemas, and checkov on the output."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import ruamel.yaml
from syrupy.assertion import SnapshotAssertion

from kube_sts.compiler import manifest, reference, schema

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent.name for p in (ROOT / "examples").glob("*/values.yaml"))


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_output_snapshot(example: str, snapshot: SnapshotAssertion) -> None:
    assert manifest.compile_values((ROOT / "examples" / example / "values.yaml").read_text()).text == snapshot


@pytest.mark.parametrize("which", sorted(schema.FILES))
def test_checked_in_schema_is_current(which: str) -> None:
    checked_in = (ROOT / "kube_sts" / "schemas" / schema.FILES[which]).read_text()
    assert checked_in == schema.text(which), (  # type: ignore[arg-type]
        "stale schema: run `python -m kube_sts.compiler.schema`"
    )


def test_values_reference_is_current() -> None:
    assert (ROOT / "docs" / "values.md").read_text() == reference.markdown(), (
        "stale docs/values.md: run `python -m kube_sts.compiler.schema`"
    )


def test_schema_flag_prints_the_values_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.compiler.cli", "--schema"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    parsed = json.loads(result.stdout)
    sts = parsed["$defs"]["Sts"]["properties"]
    assert sts["replicas"]["default"] == 2
    assert "native sidecar" in " ".join(sts["kubernetesVersion"]["description"].split())
    assert parsed["$defs"]["Webhook"]["properties"]["failurePolicy"]["default"] == "Fail"


def checkov_executable() -> str | None:
    for candidate in (os.environ.get("KUBE_STS_CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov")):
        if candidate and pathlib.Path(candidate).is_file():
            return candidate
    return None


def skipped_checks() -> dict[str, str]:
    """``.checkov.yaml``'s skip list; each entry must be preceded by a comment giving its reason."""
    text = (ROOT / ".checkov.yaml").read_text()
    reasons: dict[str, str] = {}
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
            continue
        match = re.fullmatch(r"- (CKV_K8S_\d+)", stripped)
        if match:
            reasons[match.group(1)] = " ".join(comment)
        comment = []
    listed = ruamel.yaml.YAML(typ="safe").load(text)["skip-check"]
    assert sorted(listed) == sorted(reasons)
    return reasons


def test_every_skipped_check_has_a_reason() -> None:
    reasons = skipped_checks()
    for check, reason in reasons.items():
        assert reason.startswith(check) and len(reason) > len(check) + 40, check


def test_checkov_reports_no_failed_check(tmp_path: pathlib.Path) -> None:
    executable = checkov_executable()
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("checkov is missing; .ci/run installs it into .venv-checkov and sets KUBE_STS_CHECKOV")
        pytest.skip("checkov is not installed (set KUBE_STS_CHECKOV); CI runs it")
    for example in EXAMPLES:
        result = manifest.compile_values((ROOT / "examples" / example / "values.yaml").read_text())
        (tmp_path / example).mkdir()
        for name, document in result.files:
            (tmp_path / example / name).write_text(document)
    run = subprocess.run(
        [
            executable,
            "--directory",
            str(tmp_path),
            "--config-file",
            str(ROOT / ".checkov.yaml"),
            "--output",
            "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        timeout=240,
    )
    report = json.loads(run.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(c["check_id"], c["file_path"]) for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert failed == []
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    passed = sum(r["summary"]["passed"] for r in reports if "summary" in r)
    assert passed > 100
