"""`sts-compile issuer-docs --s3-bucket ... --cloudfront-distribution ...` against moto's S3 and
CloudFront (botocore's real wire format, moto's service models)."""

from __future__ import annotations

import io
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import boto3
import moto
import pytest

from kube_sts.compiler import keys as keys_cli

NOW = 1_800_000_000
BUCKET = "openunison-sts-docs"
HOST = "d1dexjaad4ian0.cloudfront.net"
KEYS = (".well-known/openid-configuration", "certs")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = keys_cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, str]]:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_CLOUDFRONT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        cloudfront = boto3.client("cloudfront")
        origin = f"{BUCKET}.s3.us-east-1.amazonaws.com"
        distribution = cloudfront.create_distribution(
            DistributionConfig={
                "CallerReference": "kube-sts-test",
                "Comment": "kube-sts issuer",
                "Enabled": True,
                "Origins": {
                    "Quantity": 1,
                    "Items": [{"Id": "S3", "DomainName": origin, "S3OriginConfig": {"OriginAccessIdentity": ""}}],
                },
                "DefaultCacheBehavior": {
                    "TargetOriginId": "S3",
                    "ViewerProtocolPolicy": "https-only",
                    "MinTTL": 0,
                    "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
                    "TrustedSigners": {"Enabled": False, "Quantity": 0},
                },
            }
        )["Distribution"]["Id"]
        yield s3, cloudfront, distribution


@pytest.fixture
def keyset(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "aws-keys.json"
    assert run("keys", "create", "--endpoint", "aws", "-o", str(path), "--now", str(NOW))[0] == 0
    return path


def upload(keyset: pathlib.Path, distribution: str, *extra: str) -> tuple[int, str, str]:
    return run(
        "issuer-docs",
        "--keyset",
        str(keyset),
        "--host",
        HOST,
        "--now",
        str(NOW),
        "--s3-bucket",
        BUCKET,
        "--cloudfront-distribution",
        distribution,
        *extra,
    )


def invalidated(cloudfront: Any, distribution: str) -> list[list[str]]:
    listed = cloudfront.list_invalidations(DistributionId=distribution)["InvalidationList"].get("Items", [])
    paths = []
    for item in listed:
        batch = cloudfront.get_invalidation(DistributionId=distribution, Id=item["Id"])["Invalidation"]
        paths.append(sorted(batch["InvalidationBatch"]["Paths"]["Items"]))
    return paths


def test_upload_sets_the_seeds_headers_and_invalidates_the_paths(
    aws: tuple[Any, Any, str], keyset: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    s3, cloudfront, distribution = aws
    code, out, err = upload(keyset, distribution, "-o", str(tmp_path / "docs"))
    assert (code, out) == (0, ""), err
    for key in KEYS:
        stored = s3.get_object(Bucket=BUCKET, Key=key)
        assert stored["ContentType"] == "application/json" and stored["CacheControl"] == "max-age=300"
        # the very bytes -o writes (what `aws s3 sync` uploaded)
        assert stored["Body"].read() == (tmp_path / "docs" / key).read_bytes()
    discovery = json.loads(s3.get_object(Bucket=BUCKET, Key=KEYS[0])["Body"].read())
    assert discovery["issuer"] == f"https://{HOST}" and discovery["jwks_uri"] == f"https://{HOST}/certs"
    assert invalidated(cloudfront, distribution) == [["/.well-known/openid-configuration", "/certs"]]
    assert f"cloudfront {distribution}: invalidation " in err and "uploaded" in err


def test_only_changed_documents_are_put_and_invalidated(aws: tuple[Any, Any, str], keyset: pathlib.Path) -> None:
    s3, cloudfront, distribution = aws
    assert upload(keyset, distribution)[0] == 0
    first = {key: s3.head_object(Bucket=BUCKET, Key=key)["ETag"] for key in KEYS}
    # unchanged: nothing put, nothing invalidated
    code, _, err = upload(keyset, distribution)
    assert code == 0 and err.count("unchanged") == 2 and "invalidation" not in err
    assert len(invalidated(cloudfront, distribution)) == 1
    # a successor key changes the JWKS only (the discovery document names no key)
    assert run("keys", "add", str(keyset), "--now", str(NOW + 60))[0] == 0
    code, _, err = upload(keyset, distribution)
    assert code == 0, err
    assert s3.head_object(Bucket=BUCKET, Key=KEYS[0])["ETag"] == first[KEYS[0]]
    assert s3.head_object(Bucket=BUCKET, Key="certs")["ETag"] != first["certs"]
    assert len(json.loads(s3.get_object(Bucket=BUCKET, Key="certs")["Body"].read())["keys"]) == 2
    assert sorted(invalidated(cloudfront, distribution)) == [
        ["/.well-known/openid-configuration", "/certs"],
        ["/certs"],
    ]


def test_an_object_with_other_headers_is_put_again(aws: tuple[Any, Any, str], keyset: pathlib.Path) -> None:
    s3, _, distribution = aws
    assert upload(keyset, distribution)[0] == 0
    body = s3.get_object(Bucket=BUCKET, Key="certs")["Body"].read()
    s3.put_object(Bucket=BUCKET, Key="certs", Body=body, ContentType="binary/octet-stream")  # e.g. a plain `aws s3 cp`
    code, _, err = upload(keyset, distribution)
    assert code == 0 and f"s3://{BUCKET}/certs: uploaded" in err
    assert s3.head_object(Bucket=BUCKET, Key="certs")["ContentType"] == "application/json"


def test_a_missing_bucket_is_an_error_naming_it(aws: tuple[Any, Any, str], keyset: pathlib.Path) -> None:
    code, out, err = run("issuer-docs", "--keyset", str(keyset), "--host", HOST, "--s3-bucket", "no-such-bucket")
    assert (code, out) == (1, "")
    assert err.startswith("error: s3://no-such-bucket: ") and "NoSuchBucket" in err and "Traceback" not in err


def test_usage_errors(keyset: pathlib.Path) -> None:
    assert run("issuer-docs", "--keyset", str(keyset), "--host", HOST)[0::2] == (
        2,
        "sts-compile issuer-docs: give -o DIR, --s3-bucket BUCKET or both\n",
    )
    code, _, err = run(
        "issuer-docs", "--keyset", str(keyset), "--host", HOST, "-o", "x", "--cloudfront-distribution", "E1"
    )
    assert (code, err) == (2, "sts-compile issuer-docs: --cloudfront-distribution needs --s3-bucket\n")
