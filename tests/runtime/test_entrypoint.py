"""``kube-sts-server``: its console script and a config that cannot be loaded (the process serving
tokens against the real API server is tests/controlplane/test_server_process.py)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_console_script_is_registered() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kube-sts-server"] == "kube_sts.runtime.server:main"


def test_missing_config_exits_1(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kube_sts.runtime.server", "--config", str(tmp_path / "none.json")],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot load" in result.stderr and "Traceback" not in result.stderr
