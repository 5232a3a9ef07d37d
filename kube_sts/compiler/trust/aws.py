"""AWS IAM: the OIDC identity provider, each role's trust policy, and the issuer bucket's policy.

- The provider: ``aws iam create-open-id-connect-provider --url https://<host> --client-id-list
  <audience>``. No thumbprint: IAM's ``CreateOpenIDConnectProvider`` makes ``ThumbprintList``
  optional and, for an issuer served with a certificate from a CA it trusts (CloudFront's default
  domain is), secures the connection with its own library of root CAs and ignores thumbprints.
- A role's trust policy allows ``sts:AssumeRoleWithWebIdentity`` from that provider with
  ``StringEquals`` on ``<host>:aud`` (the endpoint's audience) and, per alternative of the rules,
  on ``<host>:sub``: ``StringEquals`` when the rules pin every field of the ``sub``, else
  ``StringLike`` with ``*`` for the free fields plus a ``StringNotLike`` that refuses a free field
  holding a colon (Kubernetes names never do; a role value could, and must not slide into the
  place of another field). When the ``sub`` carries the role, each role's policy names only that
  role, so a token authorized for one role is refused by every other role's policy.
- The bucket policy lets only the CloudFront distribution (``AWS:SourceArn``) read the issuer
  documents, as an origin access control needs (the seed's layout: ``/.well-known/openid-
  configuration`` and ``/certs`` in a private bucket).
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from collections.abc import Sequence
from typing import Any

from kube_sts.compiler.trust import subjects
from kube_sts.runtime import config

__all__ = ["admits", "bucket_policy", "document", "provider", "provider_arn", "shell", "trust_policy"]

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::([0-9]{12}):role/(?:[\w+=,.@/-]+/)?([\w+=,.@-]{1,64})$")
_ACCOUNT = re.compile(r"^[0-9]{12}$")
_SPECIAL = ("*", "?", "${")


def role_parts(arn: str) -> tuple[str, str]:
    """``(account, role name)`` of a role ARN; ValueError when it is not one."""
    match = _ROLE_ARN.match(arn)
    if match is None:
        raise ValueError(f"{arn!r} is not an IAM role ARN (arn:aws:iam::<12 digits>:role/<name>)")
    return match.group(1), match.group(2)


def provider(endpoint: config.Endpoint) -> dict[str, Any]:
    """``CreateOpenIDConnectProvider``'s request (no ``ThumbprintList``: see the module)."""
    return {"Url": endpoint.issuer.url, "ClientIDList": [endpoint.audience]}


def provider_arn(endpoint: config.Endpoint, account: str) -> str:
    partition = "aws"
    return f"arn:{partition}:iam::{account}:oidc-provider/{endpoint.issuer.host}"


def _like_safe(pattern: subjects.Pattern, index: int) -> None:
    for part in pattern.parts:
        texts = [part] if isinstance(part, str) else [p for p in part.parts if p]
        if any(special in text for text in texts for special in _SPECIAL):
            raise subjects.TrustError(
                ("sts", "endpoints", index, "azRules", pattern.rule),
                f"the sub pattern {pattern.glob()!r} holds '*', '?' or '${{' as text; StringLike would read it "
                "as a wildcard",
                "unpinnable-subject",
            )


def trust_policy(
    endpoint: config.Endpoint, cluster: str, account: str, role: str | None, index: int = 0
) -> dict[str, Any]:
    """The trust policy of ``role`` (None: the endpoint's ``sub`` does not carry the role)."""
    host = endpoint.issuer.host
    sub_key, aud_key = f"{host}:sub", f"{host}:aud"
    found = subjects.patterns(endpoint, cluster, role if "{role}" in endpoint.subject_template else None, index=index)
    base = {
        "Effect": "Allow",
        "Principal": {"Federated": provider_arn(endpoint, account)},
        "Action": "sts:AssumeRoleWithWebIdentity",
    }
    statements: list[dict[str, Any]] = []
    literals = [p.literal for p in found if p.literal is not None]
    if literals:
        value: str | list[str] = literals[0] if len(literals) == 1 else literals
        statements.append({**base, "Condition": {"StringEquals": {aud_key: endpoint.audience, sub_key: value}}})
    for pattern in found:
        if pattern.literal is not None:
            continue
        _like_safe(pattern, index)
        colons = sorted({pattern.glob(field) for field in pattern.wild_fields()})
        statements.append(
            {
                **base,
                "Condition": {
                    "StringEquals": {aud_key: endpoint.audience},
                    "StringLike": {sub_key: pattern.glob()},
                    "StringNotLike": {sub_key: colons[0] if len(colons) == 1 else colons},
                },
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def bucket_policy(bucket: str, account: str, distribution_id: str) -> dict[str, Any]:
    """Only the CloudFront distribution reads the bucket (origin access control, SigV4)."""
    return {
        "Version": "2008-10-17",
        "Id": "PolicyForCloudFrontPrivateContent",
        "Statement": [
            {
                "Sid": "AllowCloudFrontServicePrincipal",
                "Effect": "Allow",
                "Principal": {"Service": "cloudfront.amazonaws.com"},
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
                "Condition": {
                    "StringEquals": {"AWS:SourceArn": f"arn:aws:cloudfront::{account}:distribution/{distribution_id}"}
                },
            }
        ],
    }


def roles_for(endpoint: config.Endpoint, wanted: Sequence[str], index: int) -> tuple[str, ...]:
    """The roles to write trust for: those asked for, else the ones the rules name exactly."""
    roles = tuple(wanted) or subjects.rule_roles(endpoint)
    if not roles:
        raise subjects.TrustError(
            ("sts", "endpoints", index, "azRules"),
            "no role to write a trust policy for: the rules name none exactly; give --role ARN",
            "role-required",
        )
    return roles


def document(
    endpoint: config.Endpoint,
    cluster: str,
    roles: Sequence[str],
    *,
    index: int = 0,
    bucket: str | None = None,
    distribution_id: str | None = None,
) -> dict[str, Any]:
    """Everything AWS needs for ``endpoint``: provider, one trust policy per role, the bucket policy."""
    out: dict[str, Any] = {"openIdConnectProvider": provider(endpoint), "roles": []}
    accounts = set()
    for arn in roles_for(endpoint, roles, index):
        try:
            account, name = role_parts(arn)
        except ValueError as exc:
            raise subjects.TrustError(("sts", "endpoints", index, "azRules"), str(exc), "not-a-role") from None
        accounts.add(account)
        policy = trust_policy(endpoint, cluster, account, arn, index)
        out["roles"].append({"arn": arn, "name": name, "trustPolicy": policy})
    if bucket is not None and distribution_id is not None:
        if len(accounts) != 1:
            raise subjects.TrustError((), "the roles are in several accounts; the bucket policy needs one", "accounts")
        out["bucketPolicy"] = bucket_policy(bucket, accounts.pop(), distribution_id)
        out["bucket"] = bucket
    return out


def shell(document: dict[str, Any]) -> str:
    """The ``aws`` commands that create what ``document`` describes."""
    provider_doc = document["openIdConnectProvider"]
    lines = [
        "aws iam create-open-id-connect-provider --url "
        + shlex.quote(provider_doc["Url"])
        + " --client-id-list "
        + " ".join(shlex.quote(c) for c in provider_doc["ClientIDList"])
    ]
    for role in document["roles"]:
        policy = json.dumps(role["trustPolicy"], indent=2, sort_keys=True)
        lines.append(
            f"aws iam create-role --role-name {shlex.quote(role['name'])} --assume-role-policy-document "
            + shlex.quote(policy)
        )
    if "bucketPolicy" in document:
        policy = json.dumps(document["bucketPolicy"], indent=2, sort_keys=True)
        lines.append(
            f"aws s3api put-bucket-policy --bucket {shlex.quote(document['bucket'])} --policy {shlex.quote(policy)}"
        )
    return "\n".join(lines) + "\n"


# -- evaluation of the policies generated here (the doctor's question: would AWS admit this token?) --


def _like(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _values(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def admits(policy: dict[str, Any], host: str, claims: dict[str, Any]) -> bool:
    """Whether a trust policy generated by ``trust_policy`` admits a token with ``claims`` (IAM's
    rules for the operators it uses: values of one key OR-ed, keys and operators AND-ed)."""
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    context = {f"{host}:sub".lower(): claims.get("sub"), f"{host}:aud".lower(): claims.get("azp") or audiences[0]}
    for statement in policy.get("Statement", []):
        ok = True
        for operator, keys in statement.get("Condition", {}).items():
            for key, wanted in keys.items():
                actual = context.get(key.lower())
                if not isinstance(actual, str):
                    ok = ok and operator.startswith("StringNot")
                    continue
                if operator == "StringEquals":
                    hit = actual in _values(wanted)
                elif operator in ("StringLike", "StringNotLike"):
                    hit = any(_like(w, actual) for w in _values(wanted))
                else:
                    hit = False
                ok = ok and (not hit if operator.startswith("StringNot") else hit)
        if ok and statement.get("Effect") == "Allow":
            return True
    return False


def issuer_host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc
