"""Issuer documents: OpenID Connect discovery and JWKS for one endpoint.

The discovery document names ``issuer`` exactly as minted tokens carry it (``https://<host>``)
and ``jwks_uri = https://<host>/certs`` (the seed's S3 layout). It advertises only what kube-sts
issues: signed ID-token-style JWTs, public subjects, the claims the minter sets. The JWKS lists
every published key of the endpoint's key set, so tokens signed before a rotation still verify.
``issuer_docs`` is the ``{path}/issuer-docs`` answer: ``{"discovery": ..., "keys": {"keys": [...]}}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["AWS_TAGS", "JWKS_MAX_AGE", "discovery", "issuer_docs", "jwks"]

AWS_TAGS = "https://aws.amazon.com/tags"
"""The claim that carries AWS session tags (advertised here, set by the minter)."""

JWKS_MAX_AGE = 300
"""``Cache-Control: max-age`` of JWKS answers (AWS requires a positive value)."""

_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "cluster", "namespace", "saname")


def discovery(host: str, algorithms: Iterable[str], *, aws_session_tags: bool = False) -> dict[str, Any]:
    """The discovery document of the issuer ``https://<host>``; ``algorithms`` are the endpoint's
    signing algorithm and those of its published keys."""
    url = f"https://{host}"
    claims = list(_CLAIMS) + ([AWS_TAGS] if aws_session_tags else [])
    return {
        "issuer": url,
        "jwks_uri": f"{url}/certs",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": sorted(set(algorithms)),
        "claims_supported": claims,
    }


def jwks(keys: Sequence[Mapping[str, str]]) -> dict[str, list[dict[str, str]]]:
    return {"keys": [dict(key) for key in keys]}


def issuer_docs(
    host: str, keys: Sequence[Mapping[str, str]], algorithms: Iterable[str] = (), *, aws_session_tags: bool = False
) -> dict[str, Any]:
    """The ``issuer-docs`` answer for the published ``keys``; ``algorithms`` adds the endpoint's
    signing algorithm to those of the keys."""
    signing = [*algorithms, *(key["alg"] for key in keys if "alg" in key)]
    return {"discovery": discovery(host, signing, aws_session_tags=aws_session_tags), "keys": jwks(keys)}
