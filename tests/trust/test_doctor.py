"""``sts-compile doctor``: one line per check, exit 1 on any failure; tokens crafted with a test
key, the issuer's documents served over HTTPS on loopback with a test CA."""

from __future__ import annotations

import base64
import http.server
import io
import json
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness import runtime as harness
from kube_sts.compiler import doctor
from kube_sts.runtime.keys import keyset

ROLE = "arn:aws:iam::123456789012:role/allowed-reader"
OTHER = "arn:aws:iam::123456789012:role/allowed-writer"
HOST = "d1dexjaad4ian0.cloudfront.net"
VALUES = f"""\
sts:
  cluster: c1
  endpoints:
  - name: aws
    audience: sts.amazonaws.com
    path: /aws
    azRules:
    - scope: filter
      constraint: "(&(namespace=myns)(|(role={ROLE})(role={OTHER})))"
    issuer: {{host: {HOST}, keypair: aws-keys}}
    injector:
      label: aws-role
      token_environment_variable_name: AWS_WEB_IDENTITY_TOKEN_FILE
      label_value_environment_variable_name: AWS_ROLE_ARN
"""
KEY = keyset.generate("RS256", created=0, sign_from=0, sign_until=2**40)
STRANGER = keyset.generate("RS256", created=0, sign_from=0, sign_until=2**40)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NOW = 0  # parametrized times are offsets from the moment the token is crafted


def craft(key: keyset.Key = KEY, header: dict[str, Any] | None = None, **changes: Any) -> str:
    now = int(time.time())
    changes = {k: now + v - NOW if k in ("iat", "nbf", "exp") else v for k, v in changes.items()}
    claims = {
        "iss": f"https://{HOST}",
        "aud": "sts.amazonaws.com",
        "sub": f"c1:myns:app:{ROLE}",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        **changes,
    }
    head = _b64(json.dumps(header or {"alg": "RS256", "kid": key.kid, "typ": "JWT"}).encode())
    signing = f"{head}.{_b64(json.dumps(claims).encode())}"
    return f"{signing}.{_b64(key.sign(signing.encode()))}"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, harness.TLSFiles]]:
    tls = harness.make_tls(tmp_path_factory.mktemp("tls"))
    documents = {
        "/.well-known/openid-configuration": {"issuer": f"https://{HOST}", "jwks_uri": f"https://{HOST}/certs"},
        "/certs": {"keys": [KEY.public_jwk()]},
        "/other/.well-known/openid-configuration": {"issuer": "https://other.example", "jwks_uri": "https://x/certs"},
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            body = json.dumps(documents.get(self.path, {})).encode()
            self.send_response(200 if self.path in documents else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", tls
    server.shutdown()
    server.server_close()


def run(tmp_path: pathlib.Path, token: str, *args: str) -> tuple[int, str]:
    values = tmp_path / "values.yaml"
    values.write_text(VALUES)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    out = io.StringIO()
    return doctor.main([str(values), str(token_file), *args], out), out.getvalue()


def with_issuer(issuer: tuple[str, harness.TLSFiles]) -> list[str]:
    return ["--issuer-url", issuer[0], "--cacert", str(issuer[1].ca)]


def failures(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("FAIL")]


def test_a_good_token_passes_every_check(tmp_path: pathlib.Path, issuer: tuple[str, harness.TLSFiles]) -> None:
    code, output = run(tmp_path, craft(), *with_issuer(issuer), "--role", ROLE)
    assert code == 0, output
    names = [line.split()[1].rstrip(":") for line in output.splitlines()]
    assert names == [
        "token",
        "iss",
        "discovery",
        "kid",
        "signature",
        "aud",
        "sub",
        "alg",
        "lifetime",
        "exp",
        "clock",
        "aws",
    ]
    assert f"ok    aws: the generated trust policy of {ROLE} admits the token" in output


def test_offline_checks_skip_the_issuer(tmp_path: pathlib.Path) -> None:
    code, output = run(tmp_path, craft())
    assert code == 0
    assert "skip  discovery: give --issuer-url" in output and "skip  sub:" in output and "skip  aws:" in output


@pytest.mark.parametrize(
    ("changes", "flags", "expected"),
    [
        ({"iss": f"https://{HOST}/"}, [], f"FAIL  iss: 'https://{HOST}/' is not 'https://{HOST}'"),
        ({"aud": "sts.aws.com"}, [], "FAIL  aud: 'sts.aws.com', but endpoint aws's audience"),
        ({"sub": f"c1:other:app:{ROLE}"}, ["--role", ROLE], "FAIL  sub: 'c1:other:app:"),
        ({"exp": NOW - 10, "iat": NOW - 3610}, [], "FAIL  exp: expired"),
        (
            {"iat": NOW + 600, "nbf": NOW + 600, "exp": NOW + 4200},
            [],
            "FAIL  clock: issued",
        ),
        ({"exp": NOW + 7200}, [], "FAIL  lifetime: 7200s, but the endpoint mints 3600s tokens"),
    ],
)
def test_each_claim_failure(tmp_path: pathlib.Path, changes: dict[str, Any], flags: list[str], expected: str) -> None:
    code, output = run(tmp_path, craft(**changes), *flags)
    assert code == 1
    assert any(line.startswith(expected) for line in failures(output)), output


def test_another_roles_policy_refuses(tmp_path: pathlib.Path) -> None:
    code, output = run(tmp_path, craft(), "--role", OTHER)
    assert code == 1
    assert any("FAIL  sub:" in line for line in failures(output))
    assert f"FAIL  aws: the generated trust policy of {OTHER} refuses the token (AccessDenied)" in output


def test_unknown_kid_bad_signature_and_algorithm(tmp_path: pathlib.Path, issuer: tuple[str, harness.TLSFiles]) -> None:
    code, output = run(tmp_path, craft(STRANGER), *with_issuer(issuer))
    assert code == 1 and f"FAIL  kid: {STRANGER.kid!r} is not in the JWKS https://{HOST}/certs serves" in output
    forged = craft(STRANGER, header={"alg": "RS256", "kid": KEY.kid, "typ": "JWT"})
    code, output = run(tmp_path, forged, *with_issuer(issuer))
    assert code == 1 and f"FAIL  signature: does not verify with key {KEY.kid}" in output
    code, output = run(tmp_path, craft(header={"alg": "ES256", "kid": KEY.kid}))
    assert code == 1 and "FAIL  alg: 'ES256', but the endpoint signs with RS256" in output


def test_discovery_naming_another_issuer(tmp_path: pathlib.Path, issuer: tuple[str, harness.TLSFiles]) -> None:
    code, output = run(tmp_path, craft(), "--issuer-url", issuer[0] + "/other", "--cacert", str(issuer[1].ca))
    assert code == 1 and "names issuer 'https://other.example', the token's iss is" in output
    code, output = run(tmp_path, craft(), "--issuer-url", issuer[0] + "/missing", "--cacert", str(issuer[1].ca))
    assert code == 1 and "FAIL  discovery: cannot fetch" in output


def test_not_a_jwt(tmp_path: pathlib.Path) -> None:
    code, output = run(tmp_path, "not-a-token")
    assert code == 1 and output == "FAIL  token: not a JWT: a JWT has 3 dot-separated parts, this has 1\n"
