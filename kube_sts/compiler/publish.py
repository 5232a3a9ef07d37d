"""Upload issuer documents to S3 and invalidate CloudFront's copies: the seed's `aws s3 sync` and
`aws cloudfront create-invalidation`, as one step of ``sts-compile issuer-docs``.

Each document is put with ``Content-Type: application/json`` and ``Cache-Control: max-age=300``
(what the README's `aws s3 sync` set), at the key the discovery document promises
(``.well-known/openid-configuration`` and ``certs`` at the bucket's root, behind the distribution's
root). A document whose object already holds the same bytes and headers is not put again, and only
the paths that changed are invalidated: an unchanged path's cached copy is already what the origin
serves, so invalidating it buys nothing and spends invalidation paths (AWS charges beyond 1,000 a
month), while a changed path is invalidated so relying parties see a new key at once rather than
after ``max-age``. Credentials and region come from boto3's usual chain (environment, profile, role).

boto3 is the ``publish`` extra (`pip install 'kube-sts[publish]'`), never a runtime dependency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["CACHE_CONTROL", "CONTENT_TYPE", "Published", "publish"]

CONTENT_TYPE = "application/json"
CACHE_CONTROL = "max-age=300"


class PublishError(Exception):
    """An upload or invalidation that failed, with what to do."""


@dataclasses.dataclass(frozen=True)
class Published:
    changed: tuple[str, ...]
    """Object keys that were put (new or different)."""
    unchanged: tuple[str, ...]
    invalidation: str | None
    """The CloudFront invalidation's ID, when one was created."""


def _boto3() -> Any:
    try:
        import boto3  # noqa: PLC0415 - only publishing needs it
    except ImportError:
        raise PublishError("uploading needs boto3: pip install 'kube-sts[publish]'") from None
    return boto3


def _current(s3: Any, bucket: str, key: str) -> tuple[bytes, str | None, str | None] | None:
    """The object's bytes, Content-Type and Cache-Control, or None when there is none."""
    import botocore.exceptions  # noqa: PLC0415

    try:
        answer = s3.get_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return answer["Body"].read(), answer.get("ContentType"), answer.get("CacheControl")


def publish(bucket: str, documents: Mapping[str, bytes], distribution: str | None = None) -> Published:
    """Put ``documents`` (key -> bytes) that differ from the bucket's objects; invalidate those paths."""
    boto3 = _boto3()
    import botocore.exceptions  # noqa: PLC0415 - installed with boto3

    try:
        s3 = boto3.client("s3")
        changed: list[str] = []
        unchanged: list[str] = []
        for key, body in documents.items():
            if _current(s3, bucket, key) == (body, CONTENT_TYPE, CACHE_CONTROL):
                unchanged.append(key)
                continue
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=CONTENT_TYPE, CacheControl=CACHE_CONTROL)
            changed.append(key)
        invalidation = None
        if distribution is not None and changed:
            paths = sorted("/" + key for key in changed)
            digest = hashlib.sha256(b"\0".join(documents[key] for key in sorted(changed))).hexdigest()[:16]
            answer = boto3.client("cloudfront").create_invalidation(
                DistributionId=distribution,
                InvalidationBatch={
                    "Paths": {"Quantity": len(paths), "Items": paths},
                    # unique per upload: CloudFront answers a repeated reference with the old
                    # invalidation, which would leave content that came back (A, B, A) stale
                    "CallerReference": f"kube-sts-{time.time_ns()}-{digest}",
                },
            )
            invalidation = str(answer["Invalidation"]["Id"])
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise PublishError(f"{exc.operation_name}: {error.get('Code')}: {error.get('Message')}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise PublishError(str(exc)) from None
    return Published(tuple(changed), tuple(unchanged), invalidation)
