"""The switch from OpenUnison without a re-key, verified the way AWS verifies (the STS double,
through botocore): a token OpenUnison minted before the switch and one kube-sts mints after it
both verify against the JWKS the issuer publishes, with the same ``sub``, ``iss`` and ``aud``.

The steps are the README's ("Migrating from OpenUnison"): import OpenUnison's key pair Secret
with ``sts-compile keys import-openunison``, mount it as the endpoint's provided key set (``keys
secret``), compile the OpenUnison values file, upload kube-sts's issuer documents, let kube-sts
sign. kube-sts names the key by its thumbprint, not by OpenUnison's certificate-derived ``kid``:
with ``waitForPublication`` it does not sign until the issuer serves that ``kid``.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import pathlib
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import botocore.config
import botocore.exceptions
import botocore.session
import pytest
import ruamel.yaml

from kube_sts.compiler import keys as keys_cli
from kube_sts.compiler import manifest
from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.tokens import authorizer, issuer, minter
from tests import awssts, openunison

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "openunison" / "values.yaml"
HOST = "d1dexjaad4ian0.cloudfront.net"
ISSUER = f"https://{HOST}"
ROLE = "arn:aws:iam::123456789012:role/ou-sts-oidc"


class Bucket:
    """The S3 bucket behind ``https://<host>``: serves whatever was last uploaded, over HTTP on loopback."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        bucket = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = bucket.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=300")
                self.end_headers()
                self.wfile.write(body or b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def upload(self, directory: pathlib.Path) -> None:
        """``aws s3 sync <directory> s3://bucket/``."""
        self.files = {
            "/" + str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()
        }

    def fetch(self, url: str) -> Any:
        """The runtime's JWKS fetcher, with ``https://<host>`` mapped to the bucket."""
        assert url.startswith(ISSUER + "/")
        with urllib.request.urlopen(self.url + url[len(ISSUER) :], timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bucket() -> Iterator[Bucket]:
    served = Bucket()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def aws(bucket: Bucket) -> Iterator[awssts.AWSSTS]:
    with awssts.AWSSTS() as sts:
        sts.add_provider(awssts.Provider(ISSUER, ("sts.aws.com",), bucket.url))
        yield sts


def assume(sts: awssts.AWSSTS, token: str) -> dict[str, Any]:
    """AssumeRoleWithWebIdentity through botocore; the claims the double verified."""
    client = botocore.session.Session().create_client(
        "sts",
        region_name="us-east-1",
        endpoint_url=sts.url,
        config=botocore.config.Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}),
    )
    calls = len(sts.calls)
    answer = client.assume_role_with_web_identity(RoleArn=ROLE, RoleSessionName="migration", WebIdentityToken=token)
    assert answer["Credentials"]["AccessKeyId"] == sts.calls[calls].access_key_id
    return sts.calls[calls].claims


def run(*argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    code = keys_cli.main(list(argv), out, err)
    assert code == 0, err.getvalue()
    return out.getvalue()


def header(token: str) -> dict[str, Any]:
    part = token.split(".", maxsplit=1)[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def test_tokens_before_and_after_the_switch_verify(bucket: Bucket, aws: awssts.AWSSTS, tmp_path: pathlib.Path) -> None:
    # -- before: OpenUnison signs with its key pair and publishes its documents --------------------
    key, certificate = openunison.keypair()
    ou_docs = tmp_path / "openunison-docs.json"
    ou_docs.write_text(json.dumps(openunison.issuer_docs(HOST, certificate)))
    run("issuer-docs", "--documents", str(ou_docs), "-o", str(tmp_path / "s3-before"))
    bucket.upload(tmp_path / "s3-before")
    before = openunison.mint(
        key, host=HOST, audience="sts.aws.com", cluster="prod-east", namespace="myns", saname="app"
    )
    assert header(before) == {"alg": "RS256"}  # jose4j sets no kid
    claims_before = assume(aws, before)

    # -- the switch: the key pair imported as the endpoint's provided key set -----------------------
    secret_file = tmp_path / "unison-saml2-rp-sig.yaml"
    with secret_file.open("w") as handle:
        ruamel.yaml.YAML(typ="safe", pure=True).dump(openunison.secret(key, certificate), handle)
    keys_file = tmp_path / "aws-keys.json"
    run("keys", "import-openunison", "--endpoint", "aws", "--secret", str(secret_file), "-o", str(keys_file))
    secret = ruamel.yaml.YAML(typ="safe", pure=True).load(
        run("keys", "secret", str(keys_file), "--name", "unison-saml2-rp-sig", "--namespace", "kube-sts")
    )
    mounted = tmp_path / "keys" / "aws" / keymanager.DATA_KEY  # where the Deployment mounts the Secret
    mounted.parent.mkdir(parents=True)
    mounted.write_bytes(base64.b64decode(secret["data"][keymanager.DATA_KEY]))

    compiled = list(ruamel.yaml.YAML(typ="safe", pure=True).load_all(manifest.compile_values(EXAMPLE.read_text()).text))
    [config_map] = [o for o in compiled if o["kind"] == "ConfigMap"]
    runtime = config.RuntimeConfig.model_validate_json(config_map["data"]["config.json"])
    [endpoint] = runtime.endpoints
    assert endpoint.issuer.keys.mode == "provided" and endpoint.issuer.keys.wait_for_publication
    assert endpoint.issuer.keypair == secret["metadata"]["name"]
    offset = [0.0]
    provider = keymanager.KeyManager.from_config(
        runtime, keys_dir=tmp_path / "keys", fetcher=bucket.fetch, clock=lambda: time.time() + offset[0]
    ).provider("aws")
    provider.refresh()
    [imported] = provider.published()
    assert imported.kid == keyset.thumbprint(key)
    # The issuer still serves OpenUnison's documents, whose kid is derived from the certificate:
    # kube-sts does not sign with a kid AWS cannot find.
    with pytest.raises(keyset.KeySetError, match="not served by the issuer's JWKS yet"):
        provider.signing_key()

    # -- upload kube-sts's issuer documents (what GET /aws/issuer-docs answers) ---------------------
    docs = tmp_path / "kube-sts-docs.json"
    docs.write_text(
        json.dumps(issuer.issuer_docs(endpoint.issuer.host, provider.jwks()["keys"], (endpoint.token.algorithm,)))
    )
    run("issuer-docs", "--documents", str(docs), "-o", str(tmp_path / "s3-after"))
    bucket.upload(tmp_path / "s3-after")
    offset[0] += keymanager.PUBLICATION_INTERVAL + 1
    provider.refresh()
    signing = provider.signing_key()
    assert signing.kid == imported.kid

    # -- after: kube-sts mints for the same ServiceAccount ------------------------------------------
    caller = authorizer.Subject(
        cluster=runtime.cluster, namespace="myns", saname="app", pod="app-1", role=ROLE, endpoint="aws"
    )
    after = minter.Minter(endpoint).mint(caller, signing).token
    assert header(after)["kid"] == imported.kid
    claims_after = assume(aws, after)
    # OpenUnison's token, minted before the switch and still valid, verifies against the new JWKS
    claims_old_again = assume(aws, before)
    assert aws.errors == []
    for name in ("sub", "iss", "aud", "cluster", "namespace", "saname"):
        assert claims_before[name] == claims_after[name] == claims_old_again[name], name
    assert claims_after["sub"] == "prod-east:myns:app" and claims_after["iss"] == ISSUER

    # -- why the imported key must stay alone in the JWKS while OpenUnison's tokens live ------------
    run("keys", "add", str(keys_file), "--lead", "1d")
    run("issuer-docs", "--keyset", str(keys_file), "--host", HOST, "-o", str(tmp_path / "s3-rotated"))
    bucket.upload(tmp_path / "s3-rotated")
    assert assume(aws, after)["sub"] == "prod-east:myns:app"  # a kid picks its key
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidIdentityToken"):
        assume(aws, before)  # no kid, two keys: AWS cannot choose
