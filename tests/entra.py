"""A local Microsoft Entra ID double for workload identity federation that really verifies the assertion.

It serves HTTPS (certificate from the test CA) on 127.0.0.1 and speaks Entra's v2.0 wire format:

* ``GET /<tenant>/v2.0/.well-known/openid-configuration``: the tenant discovery document MSAL reads;
* ``POST /<tenant>/oauth2/v2.0/token`` with ``grant_type=client_credentials``,
  ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and
  ``client_assertion=<external JWT>``.

Like Entra's federated identity credentials (FICs), for each token request it:

1. finds the application registration named by ``client_id`` (``AADSTS700016`` if none);
2. finds its FIC whose ``issuer`` equals the assertion's ``iss`` exactly (``AADSTS700211``), whose
   ``subject`` equals ``sub`` exactly (``AADSTS700213``) and whose audiences contain ``aud``
   (``AADSTS700212``);
3. fetches ``<iss>/.well-known/openid-configuration``, requires its ``issuer`` to equal ``iss``
   and fetches ``jwks_uri`` (``AADSTS90061`` when that fails);
4. verifies the signature with jwcrypto and the JWKS key named by ``kid``, only for the
   algorithms in ``Entra.algorithms`` (``AADSTS700027``), then ``exp``/``nbf`` (``AADSTS700024``);

and answers with Entra's JSON: ``{"token_type": "Bearer", "expires_in", "ext_expires_in",
"access_token"}``, or an error object (``error``, ``error_description`` starting with the AADSTS
code, ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``).

Microsoft documents RS256 as the only algorithm supported for federated tokens ("tokens signed
with other algorithms may work, but haven't been tested"), so ``algorithms`` defaults to RS256 and
a test that wants ES256 widens it explicitly. ``Entra.issuer_hosts`` says where an issuer's
documents are really served (a local stand-in for ``https://<issuer host>``), so tests need no DNS.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import json
import pathlib
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

from azure.identity import WorkloadIdentityCredential
from jwcrypto import jwk, jws

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


@dataclasses.dataclass
class FederatedCredential:
    """A federated identity credential on an application registration (or managed identity)."""

    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...] = (FEDERATION_AUDIENCE,)


@dataclasses.dataclass
class Application:
    client_id: str
    credentials: list[FederatedCredential]
    object_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))


@dataclasses.dataclass(frozen=True)
class IssuerHost:
    """Where ``<issuer>/...`` is really fetched from (e.g. ``https://127.0.0.1:1234/azure``)."""

    fetch_base: str
    ssl_context: ssl.SSLContext | None = None


class EntraError(Exception):
    def __init__(self, code: int, error: str, message: str, status: int = 401) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.code = code
        self.error = error
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        return {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.message} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {now}"
            ),
            "error_codes": [self.code],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={self.code}",
        }


@dataclasses.dataclass(frozen=True)
class Call:
    """One successful token request: the application, the FIC that matched, the verified claims."""

    client_id: str
    credential: str
    scope: str
    claims: dict[str, Any]
    access_token: str


class Entra:
    """The double; ``start()``/``stop()`` or a context manager. HTTPS on 127.0.0.1."""

    def __init__(self, server_context: ssl.SSLContext, tenant_id: str) -> None:
        self.server_context = server_context
        self.tenant_id = tenant_id
        self.applications: dict[str, Application] = {}
        self.issuer_hosts: dict[str, IssuerHost] = {}
        self.algorithms: tuple[str, ...] = ("RS256",)
        self.leeway = 0
        self.requests: list[tuple[str, str]] = []
        self.calls: list[Call] = []
        self.errors: list[tuple[int, str]] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def authority(self) -> str:
        """The authority host URL, as ``authority=`` or ``AZURE_AUTHORITY_HOST`` takes it."""
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def add_application(self, application: Application) -> None:
        self.applications[application.client_id] = application

    def start(self) -> Entra:
        double = self

        class Handler(_Handler):
            entra = double

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

    def __enter__(self) -> Entra:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- tenant discovery ----------------------------------------------------------------------

    def openid_configuration(self) -> dict[str, Any]:
        base = f"{self.authority}/{self.tenant_id}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "tenant_region_scope": "EU",
        }

    # -- verification --------------------------------------------------------------------------

    def _fetch(self, issuer: str, url: str) -> Any:
        host = self.issuer_hosts.get(issuer)
        if host is None or not url.startswith(issuer + "/"):
            raise EntraError(90061, "invalid_client", f"Request to External OIDC endpoint failed: {url}")
        try:
            request = urllib.request.Request(
                host.fetch_base + url[len(issuer) :], headers={"Accept": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=5, context=host.ssl_context) as response:
                return json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise EntraError(90061, "invalid_client", f"Request to External OIDC endpoint failed: {exc}") from None

    def verify(self, client_id: str, assertion: str) -> tuple[FederatedCredential, dict[str, Any]]:
        application = self.applications.get(client_id)
        if application is None:
            raise EntraError(
                700016,
                "unauthorized_client",
                f"Application with identifier '{client_id}' was not found in the directory '{self.tenant_id}'.",
                400,
            )
        try:
            parsed = jws.JWS()
            parsed.deserialize(assertion)
            header = parsed.jose_header
            unverified = json.loads(parsed.objects["payload"])
        except Exception:
            raise EntraError(50027, "invalid_request", "JWT token is invalid or is malformed.", 400) from None
        issuer, subject, audience = unverified.get("iss"), unverified.get("sub"), unverified.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        by_issuer = [c for c in application.credentials if c.issuer == issuer]
        if not by_issuer:
            raise EntraError(
                700211,
                "invalid_client",
                f"No matching federated identity record found for presented assertion issuer '{issuer}'.",
            )
        by_subject = [c for c in by_issuer if c.subject == subject]
        if not by_subject:
            raise EntraError(
                700213,
                "invalid_client",
                f"No matching federated identity record found for presented assertion subject '{subject}'.",
            )
        matching = [c for c in by_subject if set(c.audiences) & set(audiences)]
        if not matching:
            raise EntraError(
                700212,
                "invalid_client",
                f"No matching federated identity record found for presented assertion audience '{audience}'.",
            )
        credential = matching[0]
        discovery = self._fetch(credential.issuer, f"{credential.issuer}/.well-known/openid-configuration")
        if discovery.get("issuer") != issuer:
            raise EntraError(90061, "invalid_client", "The issuer in the OIDC discovery document does not match.")
        keys = self._fetch(credential.issuer, str(discovery.get("jwks_uri", "")))
        kid, algorithm = header.get("kid"), header.get("alg")
        try:
            key = jwk.JWKSet.from_json(json.dumps(keys)).get_key(kid) if isinstance(kid, str) else None
            if key is None or algorithm not in self.algorithms:
                raise ValueError(kid)
            parsed.verify(key, alg=algorithm)
        except Exception:
            raise EntraError(700027, "invalid_client", "Client assertion failed signature validation.") from None
        claims: dict[str, Any] = json.loads(parsed.payload)
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if (
            not isinstance(exp, int)
            or exp + self.leeway <= now
            or (nbf is not None and (not isinstance(nbf, int) or nbf - self.leeway > now))
        ):
            raise EntraError(
                700024,
                "invalid_client",
                f"Client assertion is not within its valid time range. Current time: {int(now)}, "
                f"assertion valid from {nbf}, expiry time of assertion {exp}.",
            )
        return credential, claims

    def token(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        if tenant != self.tenant_id:
            raise EntraError(90002, "invalid_request", f"Tenant '{tenant}' not found.", 400)
        if form.get("grant_type") != "client_credentials":
            raise EntraError(70003, "unsupported_grant_type", "The app requested an unsupported grant type.", 400)
        if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
            raise EntraError(
                7000218,
                "invalid_client",
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            raise EntraError(1002012, "invalid_scope", f"The provided value for scope {scope} is not valid.", 400)
        client_id = form.get("client_id", "")
        credential, claims = self.verify(client_id, form["client_assertion"])
        access_token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(96)
        self.calls.append(Call(client_id, credential.name, scope, claims, access_token))
        return {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": access_token}


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
    entra: Entra
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.entra.requests.append(("GET", path))
        if path == f"/{self.entra.tenant_id}/v2.0/.well-known/openid-configuration":
            self._answer(200, self.entra.openid_configuration())
        else:
            error = EntraError(90002, "invalid_tenant", f"Tenant '{path.split('/')[1]}' not found.", 400)
            self._answer(error.status, error.body())

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.entra.requests.append(("POST", path))
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
        parts = path.strip("/").split("/")
        try:
            if len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"]:
                raise EntraError(900561, "invalid_request", "The endpoint only accepts POST requests.", 400)
            if not (self.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
                raise EntraError(900144, "invalid_request", "The request body must contain 'grant_type'.", 400)
            status, body = 200, self.entra.token(parts[0], form)
        except EntraError as error:
            self.entra.errors.append((error.code, error.error))
            status, body = error.status, error.body()
        self._answer(status, body)


def workload_identity(aad: Entra, ca_file: pathlib.Path, directory: pathlib.Path, token: str, client_id: str) -> Any:
    """azure-identity's ``WorkloadIdentityCredential`` as on AKS, against ``aad`` (trusted through
    ``ca_file``), reading ``token`` from a file in ``directory`` as it reads the sidecar's."""
    token_file = directory / "azure-token"
    token_file.write_text(token)
    return WorkloadIdentityCredential(
        tenant_id=aad.tenant_id,
        client_id=client_id,
        token_file_path=str(token_file),
        authority=aad.authority,
        connection_verify=str(ca_file),
    )
