"""A local AWS STS ``AssumeRoleWithWebIdentity`` double that really verifies the web identity token.

Like AWS, for each call it:

1. finds the registered OIDC provider whose URL equals the token's ``iss`` exactly;
2. fetches the provider's discovery document (``/.well-known/openid-configuration``), requires
   its ``issuer`` to equal ``iss`` byte for byte, and fetches ``jwks_uri``;
3. verifies the signature (jwcrypto) with the JWKS key named by the token's ``kid``
   (RS256/384/512 or ES256/384/512 only) or, for a token without ``kid`` (OpenUnison's), with
   the JWKS's only key: a JWKS of several keys refuses every token without ``kid`` (AWS looks a
   key up by the header's ``kid`` and, without one, has no way to choose; re:Post
   QUvjlh9Ot-TDGGSlJDcYBtRQ: two keys and no ``kid`` failed, one key worked), then ``aud``
   (a registered client ID), ``exp``, ``nbf``/``iat`` and the token length (4 to 20000);
4. evaluates the role's trust policy when one is registered (``policies``: explicit ``Deny``
   wins, then any matching ``Allow``; ``Principal.Federated`` must name the provider,
   ``Action`` ``sts:AssumeRoleWithWebIdentity``; conditions ``StringEquals``, ``StringNotEquals``,
   ``StringLike``, ``StringNotLike`` and their ``...IfExists`` forms on the keys IAM offers for an
   OIDC provider, ``<provider host>:sub`` and ``<provider host>:aud`` (case-insensitive key names,
   case-sensitive values; ``*`` and ``?`` wildcards for ``StringLike``; several values of a key
   are OR-ed, keys and operators AND-ed; a key absent from the request fails every operator but
   the negated ones and ``IfExists``). Custom claims are not condition keys for IAM, so a
   condition on one never matches; a bare ``sub`` condition is still ``trust``;

and answers with the real STS XML (credentials, or an ``ErrorResponse`` with
``InvalidIdentityToken``, ``ExpiredTokenException``, ``IDPCommunicationError`` or
``AccessDenied``). ``Provider.fetch_base`` says where the issuer's documents are really served
(a local stand-in for ``https://<issuer host>``), so tests need no DNS.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import http.server
import json
import pathlib
import re
import secrets
import ssl
import threading
import time
import urllib.parse
import urllib.request
from typing import Any
from xml.sax.saxutils import escape

import pytest
from jwcrypto import jwk, jws

NS = "https://sts.amazonaws.com/doc/2011-06-15/"
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


@dataclasses.dataclass
class Provider:
    """An IAM OIDC identity provider."""

    url: str
    """The provider URL as registered: must equal ``iss``."""
    client_ids: tuple[str, ...]
    fetch_base: str
    """Where ``<url>/...`` is really fetched from (e.g. ``https://127.0.0.1:1234/aws``)."""
    ssl_context: ssl.SSLContext | None = None


class STSError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclasses.dataclass(frozen=True)
class Call:
    """One successful AssumeRoleWithWebIdentity: the verified claims and the answer."""

    role_arn: str
    session_name: str
    claims: dict[str, Any]
    jwks_cache_control: str
    access_key_id: str


class AWSSTS:
    """The double; ``start()``/``stop()`` or a context manager. Plain HTTP on 127.0.0.1."""

    def __init__(self, account: str = "123456789012") -> None:
        self.account = account
        self.providers: dict[str, Provider] = {}
        self.trust: dict[str, str] = {}
        """role ARN -> the ``sub`` it trusts (roles not listed trust any subject)."""
        self.policies: dict[str, dict[str, Any]] = {}
        """role ARN -> its trust policy document (IAM JSON)."""
        self.calls: list[Call] = []
        self.errors: list[tuple[str, str]] = []
        self.leeway = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_provider(self, provider: Provider) -> None:
        self.providers[provider.url] = provider

    def start(self) -> AWSSTS:
        double = self

        class Handler(_Handler):
            sts = double

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AWSSTS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- verification --------------------------------------------------------------------------

    def _fetch(self, provider: Provider, url: str) -> tuple[Any, str]:
        if not url.startswith(provider.url + "/"):
            raise STSError("InvalidIdentityToken", f"{url} is not under the provider URL {provider.url}")
        real = provider.fetch_base + url[len(provider.url) :]
        try:
            request = urllib.request.Request(real, headers={"Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=5, context=provider.ssl_context) as response:
                return json.loads(response.read()), response.headers.get("Cache-Control", "")
        except (OSError, ValueError) as exc:
            raise STSError("IDPCommunicationError", f"cannot fetch {url}: {exc}") from None

    def verify(self, token: str, role_arn: str) -> tuple[dict[str, Any], str]:
        if not 4 <= len(token) <= 20000:
            raise STSError("ValidationError", "WebIdentityToken must be 4 to 20000 characters")
        try:
            parsed = jws.JWS()
            parsed.deserialize(token)
            header = parsed.jose_header
            unverified = json.loads(parsed.objects["payload"])
        except Exception:
            raise STSError("InvalidIdentityToken", "Couldn't parse the web identity token") from None
        if header.get("alg") not in ALGORITHMS:
            raise STSError("InvalidIdentityToken", f"unsupported signing algorithm {header.get('alg')!r}")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise STSError("InvalidIdentityToken", "the token's kid is not a non-empty string")
        issuer = unverified.get("iss")
        provider = self.providers.get(issuer) if isinstance(issuer, str) else None
        if provider is None:
            raise STSError("InvalidIdentityToken", f"No OpenIDConnect provider found in your account for {issuer}")
        discovery, _ = self._fetch(provider, f"{provider.url}/.well-known/openid-configuration")
        if discovery.get("issuer") != issuer:
            raise STSError("InvalidIdentityToken", "the discovery document's issuer does not match iss")
        keys, cache_control = self._fetch(provider, str(discovery.get("jwks_uri", "")))
        try:
            key_set = jwk.JWKSet.from_json(json.dumps(keys))
        except Exception:
            raise STSError("InvalidIdentityToken", "the JWKS cannot be parsed") from None
        if kid is None:
            candidates = list(key_set)
            if len(candidates) != 1:
                raise STSError(
                    "InvalidIdentityToken",
                    "Couldn't retrieve verification key: the token has no kid and the JWKS holds "
                    f"{len(candidates)} keys",
                )
            key = candidates[0]
        else:
            key = key_set.get_key(kid)
        if key is None:
            raise STSError("InvalidIdentityToken", f"no key {kid} in the JWKS")
        try:
            parsed.verify(key, alg=header["alg"])
        except Exception:
            raise STSError("InvalidIdentityToken", "the token's signature is invalid") from None
        claims: dict[str, Any] = json.loads(parsed.payload)
        now = time.time()
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else audiences or []
        if not set(audiences) & set(provider.client_ids):
            raise STSError("InvalidIdentityToken", "Incorrect token audience")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp + self.leeway <= now:
            raise STSError("ExpiredTokenException", "Token expired: current date/time must be before the expiration")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not isinstance(value, int) or value - self.leeway > now):
                raise STSError("InvalidIdentityToken", f"the token's {name} is in the future")
        trusted = self.trust.get(role_arn)
        if trusted is not None and claims.get("sub") != trusted:
            raise STSError("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403)
        policy = self.policies.get(role_arn)
        if policy is not None and not trust_allows(policy, self.provider_arn(provider), provider.url, claims):
            raise STSError("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity", 403)
        return claims, cache_control

    def provider_arn(self, provider: Provider) -> str:
        return f"arn:aws:iam::{self.account}:oidc-provider/{urllib.parse.urlsplit(provider.url).netloc}"

    def assume_role(self, form: dict[str, str]) -> str:
        if form.get("Action") != "AssumeRoleWithWebIdentity":
            raise STSError("InvalidAction", f"unsupported action {form.get('Action')!r}")
        role_arn, session = form.get("RoleArn", ""), form.get("RoleSessionName", "")
        if not role_arn.startswith(f"arn:aws:iam::{self.account}:role/") or not session:
            raise STSError("ValidationError", "RoleArn and RoleSessionName are required")
        claims, cache_control = self.verify(form.get("WebIdentityToken", ""), role_arn)
        duration = int(form.get("DurationSeconds") or 3600)
        expiration = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=duration)
        access_key = "ASIA" + secrets.token_hex(8).upper()
        role_name = role_arn.rsplit("/", 1)[1]
        self.calls.append(Call(role_arn, session, claims, cache_control, access_key))
        audience = claims["aud"] if isinstance(claims["aud"], str) else claims["aud"][0]
        return (
            f'<AssumeRoleWithWebIdentityResponse xmlns="{NS}">'
            "<AssumeRoleWithWebIdentityResult>"
            f"<SubjectFromWebIdentityToken>{escape(str(claims.get('sub', '')))}</SubjectFromWebIdentityToken>"
            f"<Audience>{escape(audience)}</Audience>"
            "<AssumedRoleUser>"
            f"<Arn>arn:aws:sts::{self.account}:assumed-role/{escape(role_name)}/{escape(session)}</Arn>"
            f"<AssumedRoleId>AROA{secrets.token_hex(8).upper()}:{escape(session)}</AssumedRoleId>"
            "</AssumedRoleUser>"
            "<Credentials>"
            f"<SessionToken>{secrets.token_urlsafe(48)}</SessionToken>"
            f"<SecretAccessKey>{secrets.token_urlsafe(30)}</SecretAccessKey>"
            f"<Expiration>{expiration.strftime('%Y-%m-%dT%H:%M:%SZ')}</Expiration>"
            f"<AccessKeyId>{access_key}</AccessKeyId>"
            "</Credentials>"
            f"<Provider>{escape(urllib.parse.urlsplit(claims['iss']).netloc)}</Provider>"
            "</AssumeRoleWithWebIdentityResult>"
            f"<ResponseMetadata><RequestId>{secrets.token_hex(16)}</RequestId></ResponseMetadata>"
            "</AssumeRoleWithWebIdentityResponse>"
        )


# -- trust policies (IAM's documented evaluation, for the parts a web identity trust policy uses) --

_OPERATORS = ("StringEquals", "StringNotEquals", "StringLike", "StringNotLike")


def _like(pattern: str, value: str) -> bool:
    """IAM ``StringLike``: ``*`` any run of characters (also none), ``?`` one character, case-sensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _condition(operator: str, wanted: list[str], actual: str | None) -> bool:
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    if base not in _OPERATORS:
        raise STSError("MalformedPolicyDocument", f"unsupported condition operator {operator}")
    if actual is None:
        return if_exists or base.startswith("StringNot")
    if base in ("StringEquals", "StringNotEquals"):
        hit = any(actual == w for w in wanted)
    else:
        hit = any(_like(w, actual) for w in wanted)
    return not hit if base.startswith("StringNot") else hit


def trust_allows(policy: dict[str, Any], provider_arn: str, provider_url: str, claims: dict[str, Any]) -> bool:
    """Whether ``policy`` lets a web identity with ``claims`` from ``provider_arn`` assume the role."""
    host = urllib.parse.urlsplit(provider_url).netloc
    audiences = _list(claims.get("aud"))
    context = {  # the condition keys IAM fills for an OIDC provider (":aud" is azp when present)
        f"{host}:sub".lower(): claims.get("sub") if isinstance(claims.get("sub"), str) else None,
        f"{host}:aud".lower(): str(claims.get("azp") or (audiences[0] if audiences else "")) or None,
    }
    allowed = False
    for statement in _list(policy.get("Statement", [])):
        principal = statement.get("Principal", {})
        federated = _list(principal.get("Federated", [])) if isinstance(principal, dict) else []
        actions = _list(statement.get("Action", []))
        if provider_arn not in federated or not any(
            fnmatch.fnmatchcase("sts:AssumeRoleWithWebIdentity", a) for a in actions
        ):
            continue
        matches = True
        for operator, keys in (statement.get("Condition") or {}).items():
            for key, wanted in keys.items():
                if not _condition(operator, [str(w) for w in _list(wanted)], context.get(key.lower())):
                    matches = False
        if not matches:
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def error_xml(error: STSError) -> str:
    kind = "Sender" if error.status < 500 else "Receiver"
    return (
        f'<ErrorResponse xmlns="{NS}"><Error><Type>{kind}</Type><Code>{escape(error.code)}</Code>'
        f"<Message>{escape(error.message)}</Message></Error><RequestId>{secrets.token_hex(16)}</RequestId>"
        "</ErrorResponse>"
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    sts: AWSSTS
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
        try:
            status, body = 200, self.sts.assume_role(form)
        except STSError as error:
            self.sts.errors.append((error.code, error.message))
            status, body = error.status, error_xml(error)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def web_identity_environment(
    monkeypatch: pytest.MonkeyPatch, directory: pathlib.Path, sts_url: str, token: str, role: str
) -> None:
    """The environment an AWS SDK's web-identity provider reads, and nothing else it could fall
    back to: ``token`` in a file of ``directory``, ``role``, the STS at ``sts_url``, no keys,
    profiles, config files or instance metadata."""
    token_file = directory / "token"
    token_file.write_text(token)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(directory / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(directory / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_ARN", role)
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "kube-sts-test")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts_url)
