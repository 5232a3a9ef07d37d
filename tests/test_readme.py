"""The README's set-up commands and its walk-through's values file stay true."""

from __future__ import annotations

import base64
import io
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
        assert "Traceback" not in result.stderr
        if "--s3-bucket" in words:  # uploads need the publish extra, and say so (run under moto below)
            assert result.returncode == 1 and "pip install 'kube-sts[publish]'" in result.stderr, result.stderr
            continue
        assert result.returncode == 0, f"{command}\n{result.stderr}"
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


def test_readme_trust_commands_run(tmp_path: pathlib.Path) -> None:
    """Every `sts-compile trust ...` the README names runs on the walk-through's values."""
    [values] = [block for block in fenced("AWS walk-through", "yaml") if block.startswith("sts:")]
    (tmp_path / "values.yaml").write_text(values)
    commands = readme_commands("sts-compile", "trust ")
    assert len(commands) == 2
    role = "arn:aws:iam::123456789012:role/kube-sts-s3-reader"
    for command in commands:
        words = shlex.split(command.split(" > ")[0].replace("$ROLE_ARN", role).replace("$DIST_ID", "E2EXAMPLE"))
        result = subprocess.run(
            [sys.executable, "-m", "kube_sts.compiler.cli", *words[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        document = json.loads(result.stdout)["aws"]
        assert document["roles"][0]["arn"] == role
        assert document["openIdConnectProvider"] == {
            "Url": "https://d1dexjaad4ian0.cloudfront.net",
            "ClientIDList": ["sts.aws.com"],
        }


def test_readme_upload_commands_publish_under_moto(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every `sts-compile issuer-docs ... --s3-bucket` command the README gives uploads both
    documents to the bucket it names and invalidates CloudFront (moto's S3 and CloudFront)."""
    import boto3  # noqa: PLC0415 - the publish extra, not the base install
    import moto  # noqa: PLC0415

    from kube_sts.compiler import keys  # noqa: PLC0415

    commands = [c for c in readme_commands("sts-compile", "issuer-docs") if "--s3-bucket" in c and "..." not in c]
    # and the one fed by `kubectl get --raw ... |` (the documents on stdin)
    piped = re.findall(r"\| (sts-compile issuer-docs --documents - [^\n]*)", README.replace("\\\n", " "))
    commands += [c for c in piped if "--s3-bucket" in c]
    assert len(commands) == 3, commands
    host = "d1dexjaad4ian0.cloudfront.net"
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_CLOUDFRONT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.chdir(tmp_path)
    assert keys.main(["keys", "create", "--endpoint", "aws", "-o", "aws-keys.json"]) == 0
    assert keys.main(["issuer-docs", "--keyset", "aws-keys.json", "--host", host, "-o", "docs"]) == 0
    answer = json.dumps(
        {
            "discovery": json.loads((tmp_path / "docs" / ".well-known" / "openid-configuration").read_text()),
            "keys": json.loads((tmp_path / "docs" / "certs").read_text()),
        }
    )
    with moto.mock_aws():
        cloudfront = boto3.client("cloudfront")
        distribution = cloudfront.create_distribution(DistributionConfig=_distribution_config())["Distribution"]["Id"]
        for index, command in enumerate(commands):
            words = shlex.split(command.replace("$ISSUER_HOST", host).replace("$DIST_ID", distribution))
            bucket = words[words.index("--s3-bucket") + 1]
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket=bucket)
            monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
            assert keys.main(words[1:]) == 0, (command, capsys.readouterr().err)
            for key in (".well-known/openid-configuration", "certs"):
                stored = s3.get_object(Bucket=bucket, Key=key)
                assert (stored["ContentType"], stored["CacheControl"]) == ("application/json", "max-age=300")
            listed = cloudfront.list_invalidations(DistributionId=distribution)["InvalidationList"]
            assert listed["Quantity"] == 1, command  # each command uploads into a fresh bucket
            s3.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": ".well-known/openid-configuration"}, {"Key": "certs"}]},
            )
            s3.delete_bucket(Bucket=bucket)
            cloudfront = boto3.client("cloudfront")
            distribution = cloudfront.create_distribution(
                DistributionConfig={**_distribution_config(), "CallerReference": f"readme-{index}"}
            )["Distribution"]["Id"]


def _distribution_config() -> dict[str, object]:
    return {
        "CallerReference": "readme",
        "Comment": "kube-sts issuer",
        "Enabled": True,
        "Origins": {
            "Quantity": 1,
            "Items": [
                {
                    "Id": "S3",
                    "DomainName": "openunison-sts-docs.s3.us-east-1.amazonaws.com",
                    "S3OriginConfig": {"OriginAccessIdentity": ""},
                }
            ],
        },
        "DefaultCacheBehavior": {
            "TargetOriginId": "S3",
            "ViewerProtocolPolicy": "https-only",
            "MinTTL": 0,
            "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
            "TrustedSigners": {"Enabled": False, "Quantity": 0},
        },
    }


# -- the migration from OpenUnison, run as the README gives it ---------------------------------------


def test_migration_section_runs_in_order(tmp_path: pathlib.Path) -> None:
    """Every `sts-compile` command of "Migrating from OpenUnison", in order, on the OpenUnison example
    and a key pair Secret as `kubectl get secret -o yaml` prints it; what the kubectl steps name exists."""
    from ruamel.yaml import YAML  # noqa: PLC0415

    from kube_sts.runtime.keys import keyset  # noqa: PLC0415
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
