"""Minting: the JWT a relying party receives for one caller of one endpoint.

Header ``alg``, ``kid`` (the key's RFC 7638 thumbprint), ``typ: JWT``. Claims: ``iss`` (the
issuer URL, byte-identical to the discovery document's ``issuer``), ``aud`` (the endpoint's
audience), ``sub`` (``config.Endpoint.subject_template``: default ``<cluster>:<namespace>:<saname>``,
with ``:<role>`` appended for AWS endpoints whose rules decide on the role, so the relying party
can enforce that decision), ``iat``/``nbf``/``exp`` as integers, ``jti`` (128 random bits),
``cluster``, ``namespace``, ``saname`` and, when enabled, AWS session tags under ``https://aws.amazon.com/tags``.

The compact serialization (RFC 7515 section 7.1) is built here: the header is encoded once per
key, the claims with orjson, and the loaded key signs (``keyset.Key.sign``). A general JWT
library would re-validate claims this module has just built and re-serialize the header for
every token, which costs as much as an ES256 signature; the tests verify every minted token with
PyJWT, joserfc and jwcrypto instead.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.tokens import authorizer, issuer

__all__ = ["AWS_TAGS", "Minted", "Minter"]

AWS_TAGS = issuer.AWS_TAGS


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


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
        self.template = endpoint.subject_template
        self.session_tags = endpoint.token.aws_session_tags
        self.clock = clock
        self._headers: dict[str, bytes] = {}

    def subject(self, caller: authorizer.Subject) -> str:
        return self.template.format(
            cluster=caller.cluster,
            namespace=caller.namespace,
            saname=caller.saname,
            pod=caller.pod,
            role=caller.role or "",
            endpoint=caller.endpoint,
        )

    def claims(self, caller: authorizer.Subject, now: int, jti: str, lifetime: int | None = None) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject(caller),
            "iat": now,
            "nbf": now,
            "exp": now + (self.lifetime if lifetime is None else lifetime),
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

    def header(self, key: keyset.Key) -> bytes:
        """The encoded JOSE header for ``key``: ``{"alg", "kid", "typ": "JWT"}``, built once per key."""
        encoded = self._headers.get(key.kid)
        if encoded is None:
            if len(self._headers) > 64:  # keys rotate out; never grow without bound
                self._headers.clear()
            encoded = self._headers[key.kid] = _b64(orjson.dumps({"alg": key.algorithm, "kid": key.kid, "typ": "JWT"}))
        return encoded

    def mint(self, caller: authorizer.Subject, key: keyset.Key, lifetime: int | None = None) -> Minted:
        """Sign a new token for ``caller`` with ``key``, valid ``lifetime`` seconds (default: the endpoint's)."""
        now = int(self.clock())
        jti = _b64(secrets.token_bytes(16)).decode("ascii")
        claims = self.claims(caller, now, jti, lifetime)
        signing_input = self.header(key) + b"." + _b64(orjson.dumps(claims))
        token = (signing_input + b"." + _b64(key.sign(signing_input))).decode("ascii")
        return Minted(token, key.kid, jti, now, claims["exp"], claims["sub"])
