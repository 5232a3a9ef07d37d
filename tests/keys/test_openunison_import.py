"""`sts-compile keys import-openunison`: OpenUnison's signing key pair becomes a provided key set."""

from __future__ import annotations

import base64
import copy
import io
import json
import pathlib
import stat
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from ruamel.yaml import YAML

from kube_sts.compiler import keys as keys_cli
from kube_sts.runtime.keys import keyset
from tests import openunison

NOW = 1_800_000_000
KEY, CERTIFICATE = openunison.keypair()
SECRET = openunison.secret(KEY, CERTIFICATE)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = keys_cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def write_yaml(path: pathlib.Path, document: Any) -> pathlib.Path:
    with path.open("w") as handle:
        YAML(typ="safe", pure=True).dump(document, handle)
    return path


def imported(tmp_path: pathlib.Path, secret: pathlib.Path, *extra: str) -> tuple[int, str, str, pathlib.Path]:
    output = tmp_path / "aws-keys.json"
    code, out, err = run(
        "keys", "import-openunison", "--endpoint", "aws", "--secret", str(secret), "-o", str(output), "--now", str(NOW),
        *extra,
    )  # fmt: skip
    return code, out, err, output


def test_the_key_pair_becomes_a_key_set_that_signs_now(tmp_path: pathlib.Path) -> None:
    code, out, err, output = imported(tmp_path, write_yaml(tmp_path / "secret.yaml", SECRET))
    assert (code, out) == (0, "")
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    loaded = keyset.loads(output.read_bytes())
    assert loaded.endpoint == "aws"
    [key] = loaded.keys
    # the same private key; kid is kube-sts's, the RFC 7638 thumbprint of its public half
    assert key.private_key.private_numbers() == KEY.private_numbers()
    assert key.kid == keyset.thumbprint(KEY) and key.algorithm == "RS256"
    assert (key.created, key.sign_from, key.sign_until) == (NOW, NOW, NOW + 365 * 86400)
    assert loaded.signing_key(NOW).kid == key.kid
    assert key.public_jwk()["n"] == openunison.issuer_docs("h.example", CERTIFICATE)["keys"]["keys"][0]["n"]
    assert "unison-saml2-rp-sig (2048-bit RSA)" in err and key.kid in err and "carry no kid" in err
    assert "PRIVATE KEY" not in err


def test_json_and_stdin(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_json = tmp_path / "secret.json"
    as_json.write_text(json.dumps(SECRET))
    assert imported(tmp_path, as_json)[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(SECRET)))
    output = tmp_path / "from-stdin.json"
    code, _, err = run("keys", "import-openunison", "--endpoint", "aws", "--secret", "-", "-o", str(output))
    assert code == 0, err
    assert keyset.loads(output.read_bytes()).keys[0].kid == keyset.thumbprint(KEY)


def test_a_pkcs8_key_without_certificate(tmp_path: pathlib.Path) -> None:
    secret = copy.deepcopy(SECRET)
    pem = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    secret["data"] = {"tls.key": base64.b64encode(pem).decode()}
    assert imported(tmp_path, write_yaml(tmp_path / "secret.yaml", secret))[0] == 0


def test_sign_for_and_refusal_to_overwrite(tmp_path: pathlib.Path) -> None:
    path = write_yaml(tmp_path / "secret.yaml", SECRET)
    assert imported(tmp_path, path, "--sign-for", "30d")[0] == 0
    code, _, err, output = imported(tmp_path, path)
    assert code == 1 and "already exists" in err
    assert keyset.loads(output.read_bytes()).keys[0].sign_until == NOW + 30 * 86400
    assert imported(tmp_path, path, "--force")[0] == 0


def _other_certificate() -> str:
    _, certificate = openunison.keypair()
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.PEM)).decode()


def _ec_key() -> str:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return base64.b64encode(pem).decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(type="Opaque"), "has type 'Opaque'; OpenUnison keeps a key pair in a Secret of type"),
        (lambda s: s.update(kind="ConfigMap"), "expected a Secret"),
        (lambda s: s["data"].pop("tls.key"), "has no data.tls.key"),
        (lambda s: s["data"].update({"tls.key": "not base64!"}), "data.tls.key is not base64"),
        (lambda s: s["data"].update({"tls.key": base64.b64encode(b"junk").decode()}), "not an unencrypted PEM"),
        (lambda s: s["data"].update({"tls.crt": _other_certificate()}), "tls.crt and tls.key are not one key pair"),
        (lambda s: s["data"].update({"tls.key": _ec_key()}), "not an RSA key"),
    ],
    ids=["opaque", "not-a-secret", "no-key", "not-base64", "not-pem", "other-certificate", "ec-key"],
)
def test_refusals(tmp_path: pathlib.Path, change: Any, message: str) -> None:
    secret = copy.deepcopy(SECRET)
    change(secret)
    code, out, err, output = imported(tmp_path, write_yaml(tmp_path / "secret.yaml", secret))
    assert (code, out) == (1, "") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not output.exists()


def test_unreadable_and_not_yaml(tmp_path: pathlib.Path) -> None:
    assert "cannot read" in imported(tmp_path, tmp_path / "missing.yaml")[2]
    junk = tmp_path / "junk.yaml"
    junk.write_text("a: [\n")
    code, _, err, _ = imported(tmp_path, junk)
    assert code == 1 and "not a Secret manifest" in err
