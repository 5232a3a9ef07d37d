"""A local Google Security Token Service double for workload identity federation (OIDC providers).

It serves HTTPS (certificate from the test CA) on 127.0.0.1 and answers ``POST /v1/token``, the
RFC 8693 token exchange of ``https://sts.googleapis.com/v1/token``: a form with ``grant_type=
urn:ietf:params:oauth:grant-type:token-exchange``, ``subject_token``, ``subject_token_type`` (a JWT
or an ID token), ``audience`` (the provider's resource name, ``//iam.googleapis.com/projects/<n>/
locations/global/workloadIdentityPools/<pool>/providers/<provider>``), ``requested_token_type``
(an access token) and ``scope``.

Like a workload identity pool's OIDC provider, for each exchange it:

1. finds the provider named by ``audience`` (``invalid_request`` if none, or if disabled);
2. requires the token's ``iss`` to equal the provider's issuer URI exactly;
3. fetches ``<issuer>/.well-known/openid-configuration`` (its ``issuer`` must equal ``iss``) and
   its ``jwks_uri``, and verifies the signature with joserfc (RS256 or ES256, the key named by
   ``kid``);
4. checks ``aud`` against the provider's allowed audiences (by default only
   ``https://iam.googleapis.com/<provider resource name>``), ``exp``, ``iat`` (required, not in
   the future, at most 24 hours before ``exp``), and ``sub`` (``google.subject``: required, at
   most 127 bytes), then the attribute condition if one is set;

and answers ``{"access_token", "issued_token_type", "token_type": "Bearer", "expires_in"}`` or an
OAuth error ``{"error": "invalid_grant" | "invalid_request" | ..., "error_description"}`` with
HTTP 400. ``Provider.fetch_base`` says where the issuer's documents are really served (a local
stand-in for ``https://<issuer host>``), so tests need no DNS.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import joserfc.errors
import joserfc.jwk
import joserfc.jwt

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
ALGORITHMS = ("RS256", "ES256")
MAX_LIFETIME = 86400


@dataclasses.dataclass
class Provider:
    """A workload identity pool OIDC provider."""

    name: str
    """The resource name: ``//iam.googleapis.com/projects/.../providers/<id>``."""
    issuer_uri: str
    fetch_base: str
    """Where ``<issuer_uri>/...`` is really fetched from (e.g. ``https://127.0.0.1:1234/gcp``)."""
    ssl_context: ssl.SSLContext | None = None
    allowed_audiences: tuple[str, ...] = ()
    """Empty: the default audience, ``https://iam.googleapis.com/projects/.../providers/<id>``."""
    attribute_condition: Callable[[dict[str, Any]], bool] | None = None
    disabled: bool = False

    def audiences(self) -> tuple[str, ...]:
        return self.allowed_audiences or ("https:" + self.name,)


class STSError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclasses.dataclass(frozen=True)
class Call:
    """One successful exchange: the provider, the verified claims, the scope and the answer."""

    provider: str
    claims: dict[str, Any]
    scope: str
    access_token: str


class GoogleSTS:
    """The double; ``start()``/``stop()`` or a context manager. HTTPS on 127.0.0.1."""

    def __init__(self, server_context: ssl.SSLContext) -> None:
        self.server_context = server_context
        self.providers: dict[str, Provider] = {}
        self.leeway = 0
        self.calls: list[Call] = []
        self.errors: list[tuple[str, str]] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def token_url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}/v1/token"

    def add_provider(self, provider: Provider) -> None:
        self.providers[provider.name] = provider

    def start(self) -> GoogleSTS:
        double = self

        class Handler(_Handler):
            sts = double

        self._server = _TLSServer(("127.0.0.1", 0), Handler, self.server_context)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> GoogleSTS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- verification --------------------------------------------------------------------------

    def _fetch(self, provider: Provider, url: str) -> Any:
        if not url.startswith(provider.issuer_uri + "/"):
            raise STSError("invalid_grant", f"The JWKS URI {url} is not under the issuer {provider.issuer_uri}.")
        try:
            request = urllib.request.Request(
                provider.fetch_base + url[len(provider.issuer_uri) :], headers={"Accept": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=5, context=provider.ssl_context) as response:
                return json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise STSError("invalid_grant", f"Unable to retrieve the OIDC configuration or keys: {exc}") from None

    def verify(self, provider: Provider, token: str) -> dict[str, Any]:
        try:
            encoded_header, encoded_payload, _ = token.split(".")
            header = json.loads(base64.urlsafe_b64decode(encoded_header + "=" * (-len(encoded_header) % 4)))
            unverified = json.loads(base64.urlsafe_b64decode(encoded_payload + "=" * (-len(encoded_payload) % 4)))
            assert isinstance(header, dict) and isinstance(unverified, dict)
        except Exception:
            raise STSError("invalid_grant", "The subject token is not a valid JWT.") from None
        if unverified.get("iss") != provider.issuer_uri:
            raise STSError(
                "invalid_grant",
                f"The issuer in ID Token {unverified.get('iss')} does not match the expected issuer "
                f"{provider.issuer_uri}.",
            )
        discovery = self._fetch(provider, f"{provider.issuer_uri}/.well-known/openid-configuration")
        if discovery.get("issuer") != provider.issuer_uri:
            raise STSError("invalid_grant", "The issuer in the OIDC discovery document does not match.")
        keys = self._fetch(provider, str(discovery.get("jwks_uri", "")))
        if header.get("alg") not in ALGORITHMS or not isinstance(header.get("kid"), str):
            raise STSError("invalid_grant", f"Unsupported ID Token signing algorithm or key: {header}.")
        try:
            key_set = joserfc.jwk.KeySet.import_key_set(keys)
            decoded = joserfc.jwt.decode(token, key_set, algorithms=[header["alg"]])
        except (joserfc.errors.JoseError, ValueError):
            raise STSError("invalid_grant", "Invalid ID Token signature.") from None
        claims = dict(decoded.claims)
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        if not set(audiences) & set(provider.audiences()):
            raise STSError(
                "invalid_grant", f"The audience in ID Token {audiences} does not match the expected audience."
            )
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise STSError("invalid_grant", "The ID Token must contain the exp and iat claims.")
        if exp + self.leeway <= now:
            raise STSError("invalid_grant", f"ID Token expired at {exp}.")
        if iat - self.leeway > now:
            raise STSError("invalid_grant", f"ID Token issued at {iat} is in the future.")
        if exp - iat > MAX_LIFETIME:
            raise STSError("invalid_grant", "The ID Token's lifetime exceeds 24 hours.")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise STSError("invalid_grant", "The mapped attribute 'google.subject' must be set.")
        if len(subject.encode()) > 127:
            raise STSError("invalid_grant", "The mapped attribute 'google.subject' exceeds the 127 byte limit.")
        if provider.attribute_condition is not None and not provider.attribute_condition(claims):
            raise STSError("unauthorized_client", "The given credential is rejected by the attribute condition.")
        return claims

    def exchange(self, form: dict[str, str]) -> dict[str, Any]:
        if form.get("grant_type") != TOKEN_EXCHANGE:
            raise STSError("unsupported_grant_type", f"Unsupported grant type {form.get('grant_type')!r}.")
        provider = self.providers.get(form.get("audience", ""))
        if provider is None or provider.disabled:
            raise STSError(
                "invalid_request",
                'Invalid value for "audience". This value should be the full resource name of the Identity Provider.',
            )
        if form.get("subject_token_type") not in (JWT, ID_TOKEN):
            raise STSError("invalid_request", f"Invalid subject token type {form.get('subject_token_type')!r}.")
        if form.get("requested_token_type", ACCESS_TOKEN) != ACCESS_TOKEN:
            raise STSError("invalid_request", f"Invalid requested token type {form.get('requested_token_type')!r}.")
        if not form.get("subject_token"):
            raise STSError("invalid_request", "The subject_token is required.")
        claims = self.verify(provider, form["subject_token"])
        access_token = "ya29.d." + secrets.token_urlsafe(96)
        self.calls.append(Call(provider.name, claims, form.get("scope", ""), access_token))
        return {
            "access_token": access_token,
            "issued_token_type": ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": 3599,
        }


class _TLSServer(http.server.ThreadingHTTPServer):
    """Accepts plain sockets and does each TLS handshake in the request's own thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], context: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        assert isinstance(request, socket.socket)
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    sts: GoogleSTS
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
        try:
            if urllib.parse.urlsplit(self.path).path != "/v1/token":
                raise STSError("not_found", f"{self.path} not found", 404)
            status, body = 200, self.sts.exchange(form)
        except STSError as error:
            self.sts.errors.append((error.error, error.description))
            status, body = error.status, {"error": error.error, "error_description": error.description}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
