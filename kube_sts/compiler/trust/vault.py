"""HashiCorp Vault: the JWT auth method's configuration and its roles.

- Configuration (``auth/<mount>/config``): ``bound_issuer`` is the issuer URL and the keys come
  from ``jwks_url`` (``https://<host>/certs``, fetched by Vault) or, for a Vault that cannot reach
  the issuer, ``jwt_validation_pubkeys`` (PEM public keys of a key set file, ``--keyset``; they
  must be rewritten at each rotation). ``jwt_supported_algs`` is the endpoint's algorithm.
- One role per alternative of the rules (``auth/<mount>/role/<name>``): ``role_type: jwt``,
  ``bound_audiences`` the endpoint's audience (Vault 1.17+ refuses a token with ``aud`` and a role
  without one), ``user_claim: sub``, ``bound_claims`` on the ``cluster``, ``namespace`` and
  ``saname`` claims (``bound_claims_type: glob`` when a rule leaves a field to a pattern),
  ``bound_subject`` when the whole ``sub`` is pinned, ``claim_mappings`` for the token metadata,
  and ``token_ttl``/``token_max_ttl`` (default: the endpoint's token lifetime).
"""

from __future__ import annotations

import json
import pathlib
import shlex
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization

from kube_sts.compiler.trust import subjects
from kube_sts.runtime import config
from kube_sts.runtime.keys import keyset

__all__ = ["auth_config", "document", "roles", "shell"]


def auth_config(endpoint: config.Endpoint, keyset_path: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"bound_issuer": endpoint.issuer.url}
    if keyset_path is None:
        out["jwks_url"] = f"{endpoint.issuer.url}/certs"
    else:
        keys = keyset.loads(pathlib.Path(keyset_path).read_bytes())
        out["jwt_validation_pubkeys"] = [
            key.private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
            for key in keys.keys
        ]
    out["jwt_supported_algs"] = [endpoint.token.algorithm]
    return out


def roles(
    endpoint: config.Endpoint,
    cluster: str,
    *,
    name: str | None = None,
    policies: Sequence[str] = (),
    ttl: int | None = None,
    role: str | None = None,
    index: int = 0,
) -> dict[str, dict[str, Any]]:
    """Vault roles by name: ``<name>`` for one alternative, ``<name>-<n>`` for several."""
    found = subjects.patterns(endpoint, cluster, role, index=index)
    base = name or endpoint.name
    out: dict[str, dict[str, Any]] = {}
    for number, pattern in enumerate(found, start=1):
        pinned = [(claim, value) for claim, value in pattern.claims if value != subjects.Wild(claim)]
        glob = any(isinstance(value, subjects.Wild) for _, value in pinned)
        claims = {claim: value if isinstance(value, str) else value.glob() for claim, value in pinned}
        body: dict[str, Any] = {
            "role_type": "jwt",
            "bound_audiences": [endpoint.audience],
            "user_claim": "sub",
            "bound_claims_type": "glob" if glob else "string",
            "bound_claims": claims,
            "claim_mappings": {"cluster": "cluster", "namespace": "namespace", "saname": "saname"},
            "token_ttl": ttl or endpoint.token.lifetime,
            "token_max_ttl": ttl or endpoint.token.lifetime,
            "token_policies": list(policies),
        }
        if pattern.literal is not None:
            body["bound_subject"] = pattern.literal
        out[base if len(found) == 1 else f"{base}-{number}"] = body
    return out


def document(
    endpoint: config.Endpoint,
    cluster: str,
    *,
    mount: str | None = None,
    keyset_path: str | None = None,
    name: str | None = None,
    policies: Sequence[str] = (),
    ttl: int | None = None,
    role: str | None = None,
    index: int = 0,
) -> dict[str, Any]:
    return {
        "mount": mount or f"kube-sts-{endpoint.name}",
        "config": auth_config(endpoint, keyset_path),
        "roles": roles(endpoint, cluster, name=name, policies=policies, ttl=ttl, role=role, index=index),
    }


def shell(document: dict[str, Any]) -> str:
    """``vault`` commands: enable the mount, write its configuration and roles (JSON on stdin)."""
    mount = document["mount"]
    lines = [f"vault auth enable -path={shlex.quote(mount)} jwt"]
    writes = [(f"auth/{mount}/config", document["config"])]
    writes += [(f"auth/{mount}/role/{name}", body) for name, body in document["roles"].items()]
    for path, body in writes:
        lines.append(f"vault write {shlex.quote(path)} - <<'EOF'\n{json.dumps(body, indent=2, sort_keys=True)}\nEOF")
    return "\n".join(lines) + "\n"
