"""The README's set-up commands and its walk-through's values file stay true."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced(section: str, language: str) -> list[str]:
    start = README.index(f"\n## {section}\n")
    end = README.find("\n## ", start + 1)
    return re.findall(rf"```{language}\n(.*?)```", README[start : end if end > 0 else None], re.S)


def test_two_setup_commands() -> None:
    main_job, tests = (block.strip() for block in fenced("Set up", "sh"))
    assert main_job == (
        "python3.11 -m venv .venv && .venv/bin/pip install . && .venv/bin/sts-compile examples/aws/values.yaml"
    )
    assert tests == "bash .ci/run"
    assert (ROOT / ".ci" / "run").is_file() and (ROOT / "examples" / "aws" / "values.yaml").is_file()


def test_walkthrough_values_compile(tmp_path: pathlib.Path) -> None:
    [values] = [block for block in fenced("AWS walk-through", "yaml") if block.startswith("sts:")]
    path = tmp_path / "values.yaml"
    path.write_text(values)
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.compiler.cli", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "kind: MutatingWebhookConfiguration" in result.stdout
