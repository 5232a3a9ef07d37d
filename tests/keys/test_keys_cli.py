"""`sts-compile keys ...` end to end: files, exit codes, stdout/stderr discipline."""

from __future__ import annotations

import base64
import datetime
import http.server
import io
import ipaddress
import json
import pathlib
import ssl
import stat
import subprocess
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from kube_sts.compiler import keys as keys_cli
from kube_sts.runtime.keys import keyset

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
    assert (key.algorithm, key.created, key.sign_from, key.sign_until) == ("ES256", NOW, NOW, NOW + 365 * 86400)
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
        (["issuer-docs", "-o", "out"], 2, "one of the arguments --url --documents --keyset is required"),
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


def issuer_documents(path: pathlib.Path, host: str = "d1.cloudfront.net") -> dict[str, object]:
    keys = keyset.loads(path.read_bytes())
    discovery = {"issuer": f"https://{host}", "jwks_uri": f"https://{host}/certs"}
    return {"discovery": discovery, "keys": keys.jwks(NOW)}


def test_issuer_docs_from_a_saved_answer(created: pathlib.Path, tmp_path: pathlib.Path) -> None:
    saved = tmp_path / "issuer-docs.json"
    documents = issuer_documents(created)
    saved.write_text(json.dumps(documents))
    target = tmp_path / "s3"
    code, out, err = run("issuer-docs", "--documents", str(saved), "-o", str(target))
    assert (code, out) == (0, "")
    assert "wrote .well-known/openid-configuration and certs" in err
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        ".well-known/openid-configuration",
        "certs",
    ]
    assert json.loads((target / ".well-known" / "openid-configuration").read_text()) == documents["discovery"]
    assert json.loads((target / "certs").read_text()) == documents["keys"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"keys": {"keys": []}}, "carry no keys"),
        ({"discovery": {"issuer": "http://d1.cloudfront.net", "jwks_uri": "x"}}, "is not an https URL"),
        ({"discovery": {"issuer": "https://d1", "jwks_uri": "https://d1/keys"}}, "jwks_uri must be https://d1/certs"),
        ({"keys": {"keys": [{"kid": "k", "kty": "RSA", "d": "secret"}]}}, "must be a public key"),
        ({"discovery": None}, "expected {'discovery'"),
    ],
)
def test_issuer_docs_rejects_bad_documents(
    created: pathlib.Path, tmp_path: pathlib.Path, change: dict[str, object], message: str
) -> None:
    saved = tmp_path / "issuer-docs.json"
    saved.write_text(json.dumps({**issuer_documents(created), **change}))
    code, out, err = run("issuer-docs", "--documents", str(saved), "-o", str(tmp_path / "s3"))
    assert (code, out) == (1, "")
    assert message in err
    assert not (tmp_path / "s3").exists()


def self_signed(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_issuer_docs_from_a_running_endpoint(created: pathlib.Path, tmp_path: pathlib.Path) -> None:
    body = json.dumps(issuer_documents(created)).encode()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            status = 200 if self.path == "/aws/issuer-docs" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    cert, key = self_signed(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"https://127.0.0.1:{server.server_address[1]}"
        target = tmp_path / "s3"
        code, out, err = run(
            "issuer-docs", "--url", f"{base}/aws/issuer-docs", "--cacert", str(cert), "-o", str(target)
        )
        assert (code, out) == (0, ""), err
        assert json.loads((target / "certs").read_text()) == issuer_documents(created)["keys"]
        # Without trusting the CA the fetch fails cleanly.
        code, out, err = run("issuer-docs", "--url", f"{base}/aws/issuer-docs", "-o", str(tmp_path / "other"))
        assert (code, out) == (1, "")
        assert "cannot fetch the issuer documents" in err
        code, _, err = run("issuer-docs", "--url", f"{base}/nope", "--cacert", str(cert), "-o", str(tmp_path / "x"))
        assert code == 1
        assert "HTTP Error 404" in err
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert requests == ["/aws/issuer-docs", "/nope"]
    code, _, err = run("issuer-docs", "--url", "http://127.0.0.1/aws/issuer-docs", "-o", str(tmp_path / "y"))
    assert code == 1
    assert "use the https URL" in err


def test_as_a_process(tmp_path: pathlib.Path) -> None:
    """Real exit codes and stream discipline of the command run as a process."""
    command = [sys.executable, "-m", "kube_sts.compiler.keys"]
    path = tmp_path / "k.json"
    env = {"PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"}
    created = subprocess.run(
        [*command, "keys", "create", "--endpoint", "aws", "-o", str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (created.returncode, created.stdout) == (0, "")
    shown = subprocess.run([*command, "keys", "show", str(path)], capture_output=True, text=True, env=env, check=False)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["keys"][0]["state"] == "signing"
    usage = subprocess.run([*command, "keys", "bogus"], capture_output=True, text=True, env=env, check=False)
    assert (usage.returncode, usage.stdout) == (2, "")
    assert "invalid choice" in usage.stderr


def test_retire_a_kid_that_starts_with_a_dash(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "k.json"
    while True:  # base64url thumbprints start with '-' about once in 64 keys
        key = keyset.generate("ES256", created=NOW, sign_from=NOW, sign_until=NOW + 1000)
        if key.kid.startswith("-"):
            break
    spare = keyset.generate("ES256", created=NOW, sign_from=NOW, sign_until=NOW + 2000)
    path.write_bytes(keyset.dumps(keyset.KeySet((key, spare), "aws")))
    code, out, err = run("keys", "retire", key.kid, str(path), "--now", str(NOW + 5))
    assert (code, out) == (0, ""), err
    assert keyset.loads(path.read_bytes()).get(key.kid).sign_until == NOW + 5  # type: ignore[union-attr]
    assert run("keys", "retire", "--remove", "--now", str(NOW + 6), "--", key.kid, str(path))[0] == 0
    assert keyset.loads(path.read_bytes()).get(key.kid) is None


# -- the leaked-key procedure and other sequences on sets that already changed ----------------------


def kids(path: pathlib.Path) -> list[str]:
    return [key.kid for key in keyset.loads(path.read_bytes()).keys]


def test_leak_procedure_with_a_successor_that_does_not_sign_yet(created: pathlib.Path) -> None:
    """create, add --lead 1d, add --lead 0, retire <leaked> --remove: the README's procedure."""
    (leaked,) = kids(created)
    assert run("keys", "add", str(created), "--lead", "1d", "--now", str(NOW + 10))[0] == 0
    (_, pending) = kids(created)

    code, out, err = run("keys", "add", str(created), "--lead", "0", "--now", str(NOW + 20))
    assert (code, out) == (0, "")
    assert f"dropped {pending}: it was to sign from {NOW + 10 + 86400}" in err
    loaded = keyset.loads(created.read_bytes())
    replacement = loaded.keys[-1]
    assert [key.kid for key in loaded.keys] == [leaked, replacement.kid]
    assert (replacement.sign_from, loaded.get(leaked).sign_until) == (NOW + 20, NOW + 20)  # type: ignore[union-attr]
    assert loaded.signing_key(NOW + 20).kid == replacement.kid

    code, out, err = run("keys", "retire", leaked, str(created), "--remove", "--now", str(NOW + 20))
    assert (code, out) == (0, "")
    assert kids(created) == [replacement.kid]
    assert keyset.loads(created.read_bytes()).signing_key(NOW + 20).kid == replacement.kid


def test_add_lead_zero_in_the_second_the_set_was_created(created: pathlib.Path) -> None:
    (first,) = kids(created)
    code, _, err = run("keys", "add", str(created), "--lead", "0", "--now", str(NOW))
    assert code == 0, err
    assert "signs now" in err
    loaded = keyset.loads(created.read_bytes())
    new = loaded.keys[-1]
    assert loaded.signing_key(NOW).kid == new.kid
    old = loaded.get(first)
    assert old is not None and (old.sign_from, old.sign_until) == (NOW - 1, NOW)
    assert [key.kid for key in loaded.published(NOW, 3900)] == [first, new.kid]  # its tokens still verify
    assert run("keys", "retire", first, str(created), "--remove", "--now", str(NOW))[0] == 0


def test_add_with_a_shorter_lead_supersedes_the_pending_key(created: pathlib.Path) -> None:
    (first,) = kids(created)
    assert run("keys", "add", str(created), "--lead", "1d", "--now", str(NOW))[0] == 0
    (_, pending) = kids(created)
    code, _, err = run("keys", "add", str(created), "--lead", "1h", "--now", str(NOW + 10))
    assert code == 0, err
    assert f"dropped {pending}" in err
    loaded = keyset.loads(created.read_bytes())
    new = loaded.keys[-1]
    assert [key.kid for key in loaded.keys] == [first, new.kid]
    assert loaded.signing_key(NOW + 10 + 3599).kid == first
    assert loaded.signing_key(NOW + 10 + 3600).kid == new.kid
    assert loaded.signing_key(NOW + 10 + 3600, held={new.kid}).kid == first  # one lead of fallback
    assert loaded.get(first).sign_until == NOW + 10 + 7200  # type: ignore[union-attr]


def test_add_with_a_longer_lead_keeps_the_pending_key_until_the_handover(created: pathlib.Path) -> None:
    assert run("keys", "add", str(created), "--lead", "1h", "--now", str(NOW))[0] == 0
    (first, pending) = kids(created)
    assert run("keys", "add", str(created), "--lead", "1d", "--now", str(NOW + 10))[0] == 0
    loaded = keyset.loads(created.read_bytes())
    new = loaded.keys[-1]
    assert [key.kid for key in loaded.keys] == [first, pending, new.kid]
    assert loaded.signing_key(NOW + 3600).kid == pending
    assert loaded.signing_key(NOW + 10 + 86400).kid == new.kid
    assert loaded.get(pending).sign_until == NOW + 10 + 2 * 86400  # type: ignore[union-attr]


def test_retire_a_key_that_never_signed_removes_it(created: pathlib.Path) -> None:
    assert run("keys", "add", str(created), "--lead", "1d", "--now", str(NOW))[0] == 0
    (first, pending) = kids(created)
    code, _, err = run("keys", "retire", pending, str(created), "--now", str(NOW + 10))
    assert code == 0
    assert "never signed" in err
    assert kids(created) == [first]
    code, _, err = run("keys", "retire", first, str(created), "--now", str(NOW + 400 * 86400))
    assert code == 0
    assert "already stopped signing" in err


def test_a_set_that_cannot_take_another_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "full.json"
    keys = [
        keyset.generate("ES256", created=NOW, sign_from=NOW + day * 86400, sign_until=NOW + (day + 1) * 86400)
        for day in range(keyset.MAX_KEYS)
    ]
    path.write_bytes(keyset.dumps(keyset.KeySet(tuple(keys), "aws")))
    before = path.read_bytes()
    code, out, err = run("keys", "add", str(path), "--lead", "90d", "--now", str(NOW))
    assert (code, out) == (1, "")
    assert err == f"error: {path}: cannot change the key set: 65 keys; at most 64 are allowed, remove retired keys\n"
    assert path.read_bytes() == before


def test_negative_now_is_a_usage_error(created: pathlib.Path) -> None:
    code, _, err = run("keys", "add", str(created), "--now", "-5")
    assert code == 2
    assert err.count("\n") == 1 and "non-negative" in err


_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["add", "retire", "remove", "prune", "show"]),
        st.integers(min_value=0, max_value=3 * 86400),  # seconds since the previous command
        st.sampled_from([0, 1, 300, 3600, 86400]),  # lead
        st.integers(min_value=0, max_value=7),  # which key
    ),
    max_size=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=_ACTIONS)
def test_any_sequence_ends_in_a_message_never_a_traceback(
    tmp_path: pathlib.Path, actions: list[tuple[str, int, int, int]]
) -> None:
    """Whatever order users run the key commands in, each one exits 0 or 1 with its message on
    stderr, and after an ``add`` the new key is the one that signs at its start."""
    path = tmp_path / f"seq-{len(list(tmp_path.iterdir()))}.json"
    now = NOW
    assert (
        run(
            "keys",
            "create",
            "--endpoint",
            "aws",
            "--algorithm",
            "ES256",
            "--sign-for",
            "2d",
            "-o",
            str(path),
            "--now",
            str(now),
        )[0]
        == 0
    )
    for action, step, lead, which in actions:
        now += step
        present = kids(path)
        kid = present[which % len(present)] if present else "none"
        argv = {
            "add": ["keys", "add", str(path), "--lead", str(lead), "--sign-for", "2d"],
            "retire": ["keys", "retire", kid, str(path)],
            "remove": ["keys", "retire", kid, str(path), "--remove"],
            "prune": ["keys", "prune", str(path)],
            "show": ["keys", "show", str(path)],
        }[action]
        code, _, err = run(*argv, "--now", str(now))
        assert code in (0, 1), err
        assert "Traceback" not in err
        if code == 1:
            assert err.startswith("error: ") and err.count("\n") == 1, err
        if action == "add" and code == 0:
            loaded = keyset.loads(path.read_bytes())
            new = max(loaded.keys, key=lambda key: (key.created, key.sign_from))  # no key starts after it
            assert new.sign_from == now + lead
            for moment in (now + lead, now + 2 * lead, now + lead + 86400):
                assert loaded.signing_key(moment).kid == new.kid


def test_a_late_upload_still_lists_the_key_the_runtime_keeps_signing_with(
    created: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A runtime waiting for publication keeps the old key signing until the new one is served;
    the documents of an upload made long after the handover must still list the old key."""
    assert run("keys", "add", str(created), "--lead", "1d", "--now", str(NOW))[0] == 0
    old, new = kids(created)
    late = str(NOW + 40 * 86400)
    out = tmp_path / "docs"
    code, _, err = run(
        "issuer-docs", "--keyset", str(created), "--host", "d1.cloudfront.net", "-o", str(out), "--now", late
    )
    assert code == 0, err
    assert [jwk["kid"] for jwk in json.loads((out / "certs").read_text())["keys"]] == [old, new]
    assert run("keys", "prune", str(created), "--now", late)[0] == 0  # after the upload, as the README says
    code, _, err = run(
        "issuer-docs", "--keyset", str(created), "--host", "d1.cloudfront.net", "-o", str(out), "--now", late
    )
    assert code == 0, err
    assert [jwk["kid"] for jwk in json.loads((out / "certs").read_text())["keys"]] == [new]
