"""A local Vault double of the JWT auth method that verifies logins as Vault does.

Plain HTTP on 127.0.0.1, Vault's wire format (``{"auth": {...}}`` answers, ``{"errors": [...]}``
with HTTP 400 on refusal), so the real ``hvac`` client talks to it. It serves, for any mount:

* ``POST /v1/sys/auth/<mount>`` (enable, ``type: jwt``), ``POST /v1/auth/<mount>/config`` and
  ``POST /v1/auth/<mount>/role/<name>``: the documents ``sts-compile trust --for vault`` writes;
  unknown parameters are refused, and the config needs exactly one of ``jwks_url``,
  ``jwt_validation_pubkeys`` (``oidc_discovery_url`` is not modelled);
* ``POST /v1/auth/<mount>/login`` with ``{"role", "jwt"}``.

A login is checked in the order of the JWT plugin (hashicorp/vault-plugin-auth-jwt:
``path_login.go``, ``claims.go``, ``path_role.go``; Vault's API docs, ``/auth/jwt``):

1. the role must exist (``role "x" could not be found``);
2. the signature must verify with a key from ``jwt_validation_pubkeys`` (PEM, any of them) or
   from ``jwks_url`` (the key named by ``kid``), for an algorithm in ``jwt_supported_algs``
   (default RS256) (``error validating token: ...``);
3. ``bound_issuer``, when set, must equal ``iss`` (``invalid issuer claim (iss)``);
4. time claims: one of ``iat``/``nbf``/``exp`` must be present; a missing ``exp`` is the latest of
   ``iat``/``nbf`` plus ``expiration_leeway``, a missing ``nbf`` is ``iat``; the token is expired
   when ``exp + expiration_leeway + clock_skew_leeway < now`` and not yet valid when
   ``nbf - not_before_leeway - clock_skew_leeway > now`` (leeways: 0 means the default, 150 s
   for expiry and not-before and 60 s for clock skew; -1 disables);
5. ``bound_subject``, when set, must equal ``sub``;
6. ``bound_audiences``: one of them must be in ``aud``; since Vault 1.17 a token with ``aud`` and
   a role without ``bound_audiences`` is refused (``audience claim found in JWT but no audiences
   bound to the role``);
7. ``bound_claims``: every key must be present and match one of its values, exactly
   (``bound_claims_type: string``) or as a ``*`` glob (``glob``, go-glob: ``*`` is any run of
   characters, nothing else is special);
8. ``user_claim`` (default ``sub``) must be present and a string: it names the entity alias.

The answer carries ``client_token``, ``policies`` (``token_policies``), ``lease_duration``
(``token_ttl``), ``metadata`` (``claim_mappings`` plus ``role``) and the alias name.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import secrets
import ssl
import threading
import time
import urllib.request
from typing import Any

from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jws

_CONFIG_KEYS = {"bound_issuer", "jwks_url", "jwt_validation_pubkeys", "jwt_supported_algs", "jwks_ca_pem"}
_ROLE_KEYS = {
    "role_type", "bound_audiences", "user_claim", "bound_claims_type", "bound_claims", "bound_subject",
    "claim_mappings", "token_ttl", "token_max_ttl", "token_policies", "expiration_leeway",
    "not_before_leeway", "clock_skew_leeway",
}  # fmt: skip


class VaultError(Exception):
    pass


def glob(pattern: str, value: str) -> bool:
    """go-glob: ``*`` matches any run of characters; no other character is special."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return pattern == value
    if not value.startswith(pieces[0]) or not value.endswith(pieces[-1]):
        return False
    position, end = len(pieces[0]), len(value) - len(pieces[-1])
    for piece in pieces[1:-1]:
        found = value.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return position <= end


def _leeway(value: Any, default: int) -> int:
    seconds = int(value or 0)
    return 0 if seconds < 0 else default if seconds == 0 else seconds


@dataclasses.dataclass
class Login:
    role: str
    claims: dict[str, Any]
    client_token: str


class Vault:
    def __init__(self, fetch_context: ssl.SSLContext | None = None) -> None:
        self.mounts: dict[str, dict[str, Any]] = {}
        self.roles: dict[tuple[str, str], dict[str, Any]] = {}
        self.fetch_bases: dict[str, str] = {}
        """``jwks_url`` prefix -> where it is really fetched (a local stand-in for ``https://<host>``)."""
        self.fetch_context = fetch_context
        self.logins: list[Login] = []
        self.errors: list[str] = []
        self.clock = time.time
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Vault:
        double = self

        class Handler(_Handler):
            vault = double

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # -- writes ---------------------------------------------------------------------------------

    def write(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        parts = path.strip("/").split("/")
        if parts[:2] == ["sys", "auth"]:
            if body.get("type") != "jwt":
                raise VaultError(f"unsupported auth type {body.get('type')!r}")
            self.mounts["/".join(parts[2:])] = {}
            return None
        if parts[0] != "auth":
            raise VaultError(f"no handler for route {path!r}")
        if parts[-1] == "login":
            return self.login("/".join(parts[1:-1]), body)
        if parts[-1] == "config":
            mount = "/".join(parts[1:-1])
            self._known(mount)
            unknown = set(body) - _CONFIG_KEYS
            sources = [k for k in ("jwks_url", "jwt_validation_pubkeys") if body.get(k)]
            if unknown:
                raise VaultError(f"unknown config parameters {sorted(unknown)}")
            if len(sources) != 1:
                raise VaultError("exactly one of 'jwks_url', 'jwt_validation_pubkeys' must be set")
            for pem in body.get("jwt_validation_pubkeys") or []:
                serialization.load_pem_public_key(pem.encode())
            self.mounts[mount] = dict(body)
            return None
        if parts[-2] == "role":
            mount = "/".join(parts[1:-2])
            self._known(mount)
            unknown = set(body) - _ROLE_KEYS
            if unknown:
                raise VaultError(f"unknown role parameters {sorted(unknown)}")
            if body.get("role_type", "oidc") != "jwt":
                raise VaultError("only jwt roles are modelled")
            if body.get("bound_claims_type", "string") not in ("string", "glob"):
                raise VaultError("bound_claims_type must be 'string' or 'glob'")
            self.roles[(mount, parts[-1])] = dict(body)
            return None
        raise VaultError(f"no handler for route {path!r}")

    def _known(self, mount: str) -> None:
        if mount not in self.mounts:
            raise VaultError(f"no handler for route 'auth/{mount}': the auth method is not enabled")

    # -- login ------------------------------------------------------------------------------------

    def _keys(self, config: dict[str, Any], kid: str | None) -> list[jwk.JWK]:
        if config.get("jwt_validation_pubkeys"):
            return [jwk.JWK.from_pem(pem.encode()) for pem in config["jwt_validation_pubkeys"]]
        url = str(config["jwks_url"])
        for prefix, base in self.fetch_bases.items():
            if url.startswith(prefix):
                url = base + url[len(prefix) :]
        with urllib.request.urlopen(url, timeout=5, context=self.fetch_context) as response:
            key_set = jwk.JWKSet.from_json(response.read())
        key = key_set.get_key(kid) if kid else None
        return [key] if key is not None else []

    def login(self, mount: str, body: dict[str, Any]) -> dict[str, Any]:
        role_name, token = str(body.get("role", "")), str(body.get("jwt", ""))
        role = self.roles.get((mount, role_name))
        if role is None:
            raise VaultError(f'role "{role_name}" could not be found')
        config = self.mounts.get(mount) or {}
        if not config:
            raise VaultError("could not load configuration")
        try:
            parsed = jws.JWS()
            parsed.deserialize(token)
            header = parsed.jose_header
        except Exception:
            raise VaultError("error validating token: malformed token") from None
        if header.get("alg") not in (config.get("jwt_supported_algs") or ["RS256"]):
            raise VaultError(f"error validating token: unsupported signing algorithm {header.get('alg')!r}")
        verified = False
        for key in self._keys(config, header.get("kid")):
            try:
                parsed.verify(key, alg=header["alg"])
                verified = True
                break
            except Exception:
                continue
        if not verified:
            raise VaultError("error validating token: no known key successfully validated the token signature")
        claims: dict[str, Any] = json.loads(parsed.payload)
        if config.get("bound_issuer") and claims.get("iss") != config["bound_issuer"]:
            raise VaultError("error validating claims: validation failed, invalid issuer claim (iss)")
        now = self.clock()
        iat, nbf, exp = (claims.get(k) for k in ("iat", "nbf", "exp"))
        if iat is None and nbf is None and exp is None:
            raise VaultError("no issue time, notbefore, or expiration time encoded in token")
        exp_leeway = _leeway(role.get("expiration_leeway"), 150)
        nbf_leeway = _leeway(role.get("not_before_leeway"), 150)
        skew = _leeway(role.get("clock_skew_leeway"), 60)
        if exp is None:
            exp = max(iat or 0, nbf or 0) + exp_leeway
        if nbf is None:
            nbf = iat if iat is not None else now - nbf_leeway
        if exp + exp_leeway + skew < now:
            raise VaultError("error validating claims: validation failed, token is expired (exp)")
        if nbf - nbf_leeway - skew > now:
            raise VaultError("error validating claims: validation failed, token not valid yet (nbf)")
        if role.get("bound_subject") and claims.get("sub") != role["bound_subject"]:
            raise VaultError("error validating claims: validation failed, invalid subject claim (sub)")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        bound = list(role.get("bound_audiences") or [])
        if not bound and audiences:
            raise VaultError("error validating claims: audience claim found in JWT but no audiences bound to the role")
        if bound and not set(bound) & set(audiences):
            raise VaultError("error validating claims: aud claim does not match any bound audience")
        use_glob = role.get("bound_claims_type", "string") == "glob"
        for name, wanted in (role.get("bound_claims") or {}).items():
            actual = claims.get(name)
            if actual is None:
                raise VaultError(f'error validating claims: claim "{name}" is missing')
            actuals = actual if isinstance(actual, list) else [actual]
            expected = wanted if isinstance(wanted, list) else [wanted]
            if not any((glob(e, a) if use_glob and isinstance(a, str) else a == e) for e in expected for a in actuals):
                raise VaultError(
                    f'error validating claims: claim "{name}" does not match any associated bound claim values'
                )
        user_claim = role.get("user_claim") or "sub"
        user = claims.get(user_claim)
        if user is None:
            raise VaultError(f'"{user_claim}" claim not found in token')
        if not isinstance(user, str):
            raise VaultError(f'"{user_claim}" claim could not be converted to string')
        client_token = "hvs." + secrets.token_urlsafe(24)
        self.logins.append(Login(role_name, claims, client_token))
        metadata = {
            target: str(claims[source])
            for source, target in (role.get("claim_mappings") or {}).items()
            if source in claims
        }
        return {
            "auth": {
                "client_token": client_token,
                "accessor": secrets.token_urlsafe(12),
                "policies": ["default", *role.get("token_policies", [])],
                "token_policies": ["default", *role.get("token_policies", [])],
                "metadata": {**metadata, "role": role_name},
                "lease_duration": int(role.get("token_ttl") or 2764800),
                "renewable": True,
                "entity_id": "",
                "token_type": "service",
                "orphan": True,
                "alias": user,
            }
        }


class _Handler(http.server.BaseHTTPRequestHandler):
    vault: Vault
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self, status: int, body: dict[str, Any] | None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            answer = self.vault.write(self.path.removeprefix("/v1/"), body)
        except VaultError as error:
            self.vault.errors.append(str(error))
            self._answer(400, {"errors": [str(error)]})
            return
        self._answer(200 if answer is not None else 204, answer)

    do_PUT = do_POST
