"""`sts-compile keys ...` end to end: files, exit codes, stdout/stderr discipline."""

from __future__ import annotations

import base64
import io
import json
import pathlib
import stat

import pytest
from ruamel.yaml import YAML

from kube_sts.compiler import keys as keys_cli
from kube_sts.runtime import keyset

NOW = 1_800_000_000


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = keys_cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def created(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "aws.json"
    code, out, err = run(
        "keys", "create", "--endpoint", "aws", "--algorithm", "ES256", "-o", str(path), "--now", str(NOW)
    )
    assert (code, out) == (0, "")
    assert "created key set for endpoint aws" in err
    return path


def test_create_writes_a_private_file_that_signs_now(created: pathlib.Path) -> None:
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    loaded = keyset.loads(created.read_bytes())
    assert loaded.endpoint == "aws"
    (key,) = loaded.keys
    assert (key.algorithm, key.created, key.sign_from, key.sign_until) == ("ES256", NOW, NOW, NOW + 30 * 86400)
    assert loaded.signing_key(NOW).kid == key.kid
    assert list(created.parent.iterdir()) == [created]  # no temporary files left behind


def test_create_refuses_to_overwrite(created: pathlib.Path) -> None:
    before = created.read_bytes()
    code, out, err = run("keys", "create", "--endpoint", "aws", "-o", str(created))
    assert (code, out) == (1, "")
    assert "already exists" in err
    assert created.read_bytes() == before
    assert run("keys", "create", "--endpoint", "aws", "-o", str(created), "--force")[0] == 0
    assert keyset.loads(created.read_bytes()).keys[0].algorithm == "RS256"


def test_add_publishes_ahead_and_hands_over(created: pathlib.Path) -> None:
    (old,) = keyset.loads(created.read_bytes()).keys
    code, out, err = run("keys", "add", str(created), "--lead", "1d", "--now", str(NOW + 1000))
    assert (code, out) == (0, "")
    assert "upload the issuer documents before then" in err
    loaded = keyset.loads(created.read_bytes())
    assert loaded.keys[0].kid == old.kid
    new = loaded.keys[1]
    assert new.algorithm == "ES256"  # follows the newest key
    assert new.sign_from == NOW + 1000 + 86400
    assert loaded.keys[0].sign_until == new.sign_from + 86400  # fallback while the new key is held
    assert loaded.signing_key(new.sign_from - 1).kid == old.kid
    assert loaded.signing_key(new.sign_from).kid == new.kid
    assert loaded.signing_key(new.sign_from, held={new.kid}).kid == old.kid


def test_retire_and_remove(created: pathlib.Path) -> None:
    (old,) = keyset.loads(created.read_bytes()).keys
    code, _, err = run("keys", "retire", old.kid, str(created), "--now", str(NOW + 10))
    assert code == 1
    assert "refusing, no key can sign" in err
    assert run("keys", "add", str(created), "--lead", "100", "--now", str(NOW + 10))[0] == 0
    assert keyset.loads(created.read_bytes()).get(old.kid).sign_until == NOW + 210  # type: ignore[union-attr]
    code, _, err = run("keys", "retire", old.kid, str(created), "--now", str(NOW + 120))
    assert code == 0
    assert "stays published until its tokens expire" in err
    loaded = keyset.loads(created.read_bytes())
    assert loaded.get(old.kid).sign_until == NOW + 120  # type: ignore[union-attr]
    assert loaded.published(NOW + 120 + 3899, 3900)[0].kid == old.kid
    assert run("keys", "retire", "nope", str(created))[0] == 1

    code, _, err = run("keys", "prune", str(created), "--token-lifetime", "1h", "--now", str(NOW + 120 + 3900))
    assert code == 0
    assert f"pruned {old.kid}" in err
    assert keyset.loads(created.read_bytes()).get(old.kid) is None


def test_remove_a_compromised_key(created: pathlib.Path) -> None:
    assert run("keys", "add", str(created), "--lead", "0", "--now", str(NOW + 10))[0] == 0
    old = keyset.loads(created.read_bytes()).keys[0]
    code, _, err = run("keys", "retire", old.kid, str(created), "--remove", "--now", str(NOW + 20))
    assert code == 0
    assert "removed" in err
    assert keyset.loads(created.read_bytes()).get(old.kid) is None


def test_show_prints_public_information_only(created: pathlib.Path) -> None:
    run("keys", "add", str(created), "--now", str(NOW + 5))
    code, out, err = run("keys", "show", str(created), "--now", str(NOW + 5))
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert [entry["state"] for entry in document["keys"]] == ["signing", "next"]
    assert document["endpoint"] == "aws"
    assert "PRIVATE" not in out
    for entry in document["keys"]:
        assert "d" not in entry["publicJwk"]
    assert run("keys", "show", str(created), "--now", str(NOW + 5))[1] == out  # deterministic


def test_secret_manifest(created: pathlib.Path) -> None:
    code, out, err = run("keys", "secret", str(created), "--name", "aws-keys", "--namespace", "kube-sts")
    assert code == 0
    assert "contains private signing keys" in err
    manifest = YAML(typ="safe").load(out)
    assert manifest["kind"] == "Secret"
    assert manifest["metadata"] == {
        "name": "aws-keys",
        "namespace": "kube-sts",
        "labels": {
            "app.kubernetes.io/name": "kube-sts",
            "app.kubernetes.io/component": "keys",
            "kube-sts.io/endpoint": "aws",
        },
    }
    assert base64.b64decode(manifest["data"]["keyset.json"]) == created.read_bytes()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["keys"], 2, "the following arguments are required"),
        (["keys", "create", "-o", "x.json"], 2, "--endpoint"),
        (["keys", "create", "--endpoint", "AWS", "-o", "x.json"], 2, "is not an endpoint name"),
        (["keys", "create", "--endpoint", "aws", "--algorithm", "HS256", "-o", "x.json"], 2, "invalid choice"),
        (["keys", "create", "--endpoint", "aws", "--sign-for", "soon", "-o", "x.json"], 2, "not a duration"),
        (["keys", "create", "--endpoint", "aws", "--rsa-bits", "1024", "-o", "x.json"], 1, "at least 2048 bits"),
        (["keys", "secret", "x.json", "--name", "Bad_Name", "--namespace", "ns"], 2, "is not a Secret name"),
        (["keys", "show", "missing.json"], 1, "missing.json: cannot read"),
        (["frobnicate"], 2, "invalid choice"),
        (["issuer-docs", "-o", "out"], 2, "the following arguments are required: --url"),
    ],
)
def test_usage_and_input_errors(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], code: int, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result, out, err = run(*argv)
    assert (result, out) == (code, "")
    assert message in err
    assert not (tmp_path / "x.json").exists()


def test_bad_key_set_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"version": 1, "keys": [')
    for argv in (["keys", "show", str(path)], ["keys", "secret", str(path), "--name", "k", "--namespace", "ns"]):
        code, out, err = run(*argv)
        assert (code, out) == (1, "")
        assert "corrupt or truncated JSON" in err
