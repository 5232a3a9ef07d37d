"""The README's set-up commands and its walk-through's values file stay true."""

from __future__ import annotations

import base64
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

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


# -- the README's commands from the install it gives (`pip install .`, no extras) ------------------

_SKIP_COPY = shutil.ignore_patterns(".venv*", ".git", "__pycache__", "*.egg-info", "build", ".*_cache", ".hypothesis")


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A virtual environment holding kube-sts and its base dependencies only, installed the way
    the README's set-up command does it (from a copy of the tree, so no build output lands in it;
    pip's cache and configured wheel sources make this take seconds, not minutes)."""
    root = tmp_path_factory.mktemp("base-install")
    source = root / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_SKIP_COPY)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        check=True,
        cwd=root,
    )
    return venv


def readme_commands(program: str, *prefixes: str, section: str | None = None) -> list[str]:
    """Every ``program <prefix> ...`` command line in the README's shell blocks (of ``section``
    only, when given), in order (also the commented alternatives), without what is piped after it."""
    commands: list[str] = []
    blocks = fenced(section, "sh") if section is not None else re.findall(r"```sh\n(.*?)```", README, re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            command = line.strip().lstrip("#").strip().split(" | ")[0].split("  #")[0].strip()
            synopsis = command.endswith("...")  # the Commands section's summary lines
            if not synopsis and any(command.startswith(f"{program} {prefix}") for prefix in prefixes):
                commands.append(command)
    return commands


@pytest.mark.slow
def test_readme_key_commands_run_from_the_base_install(base_install: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Every `sts-compile keys ...` and `issuer-docs --keyset` the README names runs, in the order the
    README gives them, with only the base dependencies installed (no `[server]` extra)."""
    python = base_install / "bin" / "python"
    missing = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print([m for m in ('orjson', 'uvicorn') if u.find_spec(m)])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert missing.stdout.strip() == "[]"  # the server extra really is absent

    commands = readme_commands("sts-compile", "keys ", "issuer-docs --keyset", section="AWS walk-through")
    actions = [shlex.split(command)[1:3] for command in commands]
    assert ["keys", "create"] in actions and ["issuer-docs", "--keyset"] in actions
    for action in ("add", "retire", "prune", "show", "secret"):
        assert ["keys", action] in actions, action

    sts_compile = str(base_install / "bin" / "sts-compile")
    signing: str | None = None
    for command in commands:
        words = shlex.split(command.replace("$ISSUER_HOST", "d1dexjaad4ian0.cloudfront.net"))
        words = [str(tmp_path / "docs") if word == "$S3DIR" else word for word in words]
        if "<kid>" in words:
            assert signing is not None, "retire comes after a key signed"
            words[words.index("<kid>")] = signing
        if words[1:3] == ["keys", "add"] and "0" in words:  # the leak: the key signing now is retired
            signing = _signing_kid(sts_compile, tmp_path)
        result = subprocess.run([sts_compile, *words[1:]], cwd=tmp_path, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        assert "Traceback" not in result.stderr
    assert sorted(path.name for path in (tmp_path / "docs").rglob("*") if path.is_file()) == [
        "certs",
        "openid-configuration",
    ]


def _signing_kid(sts_compile: str, directory: pathlib.Path) -> str:
    shown = subprocess.run(
        [sts_compile, "keys", "show", "aws-keys.json"], cwd=directory, capture_output=True, check=True
    )
    [kid] = [key["kid"] for key in json.loads(shown.stdout)["keys"] if key["state"] == "signing"]
    return str(kid)


@pytest.mark.slow
def test_readme_setup_compiles_from_the_base_install(base_install: pathlib.Path) -> None:
    """The set-up command's last step (`sts-compile examples/aws/values.yaml`) in that install."""
    result = subprocess.run(
        [str(base_install / "bin" / "sts-compile"), "examples/aws/values.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "kind: MutatingWebhookConfiguration" in result.stdout


# -- the migration from OpenUnison, run as the README gives it ---------------------------------------


def test_migration_section_runs_in_order(tmp_path: pathlib.Path) -> None:
    """Every `sts-compile` command of "Migrating from OpenUnison", in order, on the OpenUnison example
    and a key pair Secret as `kubectl get secret -o yaml` prints it; what the kubectl steps name exists."""
    from ruamel.yaml import YAML  # noqa: PLC0415

    from kube_sts.runtime import keyset  # noqa: PLC0415
    from tests import openunison  # noqa: PLC0415

    yaml = YAML(typ="safe", pure=True)
    example = yaml.load((ROOT / "examples" / "openunison" / "values.yaml").read_text())
    [endpoint] = example["sts"]["endpoints"]
    key, certificate = openunison.keypair()
    (tmp_path / "values.yaml").write_text((ROOT / "examples" / "openunison" / "values.yaml").read_text())
    lines = [
        line.strip()
        for block in fenced("Migrating from OpenUnison", "sh")
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert f"kubectl -n openunison get secret {endpoint['issuer']['keypair']} -o yaml > openunison-key.yaml" in lines
    ran: list[str] = []
    for line in lines:
        words = shlex.split(line.replace("$S3DIR", str(tmp_path / "s3")).replace("$DIST_ID", "E123"))
        if words[:4] == ["kubectl", "-n", "openunison", "get"]:  # the Secret OpenUnison's operator keeps
            with (tmp_path / words[-1]).open("w") as handle:
                yaml.dump(openunison.secret(key, certificate, words[4 + 1]), handle)
            continue
        if words[0] == "rm":
            (tmp_path / words[1]).unlink()
            continue
        if words[:3] == ["kubectl", "apply", "-f"] and words[3] != "-":
            assert (tmp_path / words[3]).is_file(), line
        if words[:3] == ["kubectl", "apply", "-k"]:
            assert (tmp_path / words[3] / "kustomization.yaml").is_file(), line
        if words[0] != "sts-compile":
            continue
        command = words[: words.index("|")] if "|" in words else words[: words.index(">")] if ">" in words else words
        result = subprocess.run(
            [sys.executable, "-m", "kube_sts.compiler.cli", *command[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        ran.append(" ".join(command[1:3]))
        if command[1:3] == ["keys", "secret"]:
            secret = yaml.load(result.stdout)
            assert secret["metadata"]["name"] == endpoint["issuer"]["keypair"]
            assert secret["metadata"]["namespace"] == "kube-sts"
            stored = keyset.loads(base64.b64decode(secret["data"]["keyset.json"]))
            assert [k.kid for k in stored.keys] == [keyset.thumbprint(key)]
    assert ran == [
        "values.yaml",
        "keys import-openunison",
        "issuer-docs --keyset",
        "values.yaml --output-dir",
        "keys secret",
    ]
    assert not (tmp_path / "openunison-key.yaml").exists()
    jwks = json.loads((tmp_path / "s3" / "certs").read_text())
    assert [k["kid"] for k in jwks["keys"]] == [keyset.thumbprint(key)]
    discovery = json.loads((tmp_path / "s3" / ".well-known" / "openid-configuration").read_text())
    assert discovery["issuer"] == f"https://{endpoint['issuer']['host']}"
