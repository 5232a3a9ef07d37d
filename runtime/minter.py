"""Minting: the JWT a relying party receives for one caller of one endpoint.

Header ``alg``, ``kid`` (the key's RFC 7638 thumbprint), ``typ: JWT``. Claims: ``iss`` (the
issuer URL, byte-identical to the discovery document's ``issuer``), ``aud`` (the endpoint's
audience), ``sub`` (the endpoint's template, default ``<cluster>:<namespace>:<saname>``),
``iat``/``nbf``/``exp`` as integers, ``jti`` (128 random bits), ``cluster``, ``namespace``,
``saname`` and, when enabled, AWS session tags under ``https://aws.amazon.com/tags``.

PyJWT receives the loaded key object; re-parsing PEM would cost milliseconds per token. The
claims are serialized once here and signed through PyJWT's JWS layer, which skips the JWT
layer's re-validation of claims this module has just built (a fifth of the per-token cost).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt

from kube_sts.runtime import authorizer, config, keyset

__all__ = ["AWS_TAGS", "Minted", "Minter"]

AWS_TAGS = "https://aws.amazon.com/tags"
_JWS = jwt.PyJWS()


@dataclasses.dataclass(frozen=True, slots=True)
class Minted:
    """A signed token and what the audit log records about it (never the token itself)."""

    token: str
    kid: str
    jti: str
    issued_at: int
    expires: int
    subject: str


class Minter:
    """Mints tokens for one endpoint."""

    def __init__(self, endpoint: config.Endpoint, clock: Callable[[], float] = time.time) -> None:
        self.endpoint = endpoint
        self.issuer = endpoint.issuer.url
        self.audience = endpoint.audience
        self.lifetime = endpoint.token.lifetime
        self.template = endpoint.token.subject
        self.session_tags = endpoint.token.aws_session_tags
        self.clock = clock

    def subject(self, caller: authorizer.Subject) -> str:
        return self.template.format(
            cluster=caller.cluster,
            namespace=caller.namespace,
            saname=caller.saname,
            pod=caller.pod,
            role=caller.role or "",
            endpoint=caller.endpoint,
        )

    def claims(self, caller: authorizer.Subject, now: int, jti: str) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject(caller),
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": jti,
            "cluster": caller.cluster,
            "namespace": caller.namespace,
            "saname": caller.saname,
        }
        if self.session_tags:
            claims[AWS_TAGS] = {
                "principal_tags": {
                    "cluster": [caller.cluster],
                    "namespace": [caller.namespace],
                    "saname": [caller.saname],
                },
                "transitive_tag_keys": ["cluster", "namespace", "saname"],
            }
        return claims

    def mint(self, caller: authorizer.Subject, key: keyset.Key) -> Minted:
        """Sign a new token for ``caller`` with ``key`` (which must match the key set's algorithm)."""
        now = int(self.clock())
        jti = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")
        claims = self.claims(caller, now, jti)
        payload = json.dumps(claims, separators=(",", ":")).encode()
        token = _JWS.encode(payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "JWT"})
        return Minted(token, key.kid, jti, now, claims["exp"], claims["sub"])
