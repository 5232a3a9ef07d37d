"""`sts-compile trust` on the bundled examples: the relying party follows from each endpoint's
preset (no ``--for``), and what a values file cannot say is asked for by name."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def trust(example: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kube_sts.compiler.cli",
            "trust",
            str(ROOT / "examples" / example / "values.yaml"),
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize(("example", "party"), [("gcp", "gcp"), ("vault", "vault")])
def test_the_preset_names_the_relying_party(example: str, party: str) -> None:
    result = trust(example)
    assert result.returncode == 0, result.stderr
    [document] = json.loads(result.stdout).values()
    assert document["relyingParty"] == party


def test_an_aws_example_asks_for_the_role_it_cannot_know() -> None:
    result = trust("aws")
    assert result.returncode == 1
    assert "give --role ARN [role-required]" in result.stderr
    role = "arn:aws:iam::123456789012:role/reader"
    result = trust("aws", "--role", role)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["aws"]["roles"][0]["arn"] == role
