"""The token service: each endpoint's token exchange and issuer documents, and the audit of each decision.

Routes, for every endpoint of the runtime config under its ``path`` (``routes``):

- ``POST {path}/token`` with ``Authorization: Bearer <projected ServiceAccount token>`` answers
  ``{"token": "<JWT>", "expires_at": <epoch seconds>, "expires_in": <seconds>}``;
- ``GET {path}/issuer-docs``: ``{"discovery": {...}, "keys": {"keys": [...]}}``;
- ``GET {path}/.well-known/openid-configuration`` and ``GET {path}/certs`` (JWKS, cached by
  clients for ``issuer.JWKS_MAX_AGE`` seconds).

The caller is validated by ``callers.Callers``, authorized by the endpoint's ``authorizer``,
and the token signed by its ``minter`` with the key ``keys`` names; each decision is counted and
written to the audit trail.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Protocol

from kube_sts.runtime import config, roles
from kube_sts.runtime.http import messages, metrics
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.kube import guard
from kube_sts.runtime.tokens import audit, authorizer, callers, issuer, minter

__all__ = ["EndpointKeys", "KeySource", "TokenService"]

log = logging.getLogger("kube_sts.server")


class EndpointKeys(Protocol):
    """One endpoint's keys (``keys.manager.KeyProvider``)."""

    def signing_key(self) -> keyset.Key: ...

    def published(self) -> tuple[keyset.Key, ...]: ...


class KeySource(Protocol):
    """Every endpoint's keys (``keys.manager.KeyManager``)."""

    def provider(self, endpoint: str) -> EndpointKeys: ...

    def status(self) -> tuple[bool, tuple[str, ...]]: ...


class Router(Protocol):
    def add_route(self, method: str, path: str, handler: messages.Handler, *, max_body: int = ...) -> None: ...


@dataclasses.dataclass(frozen=True)
class Endpoint:
    config: config.Endpoint
    authorizer: authorizer.Authorizer
    minter: minter.Minter


class TokenService:
    """Every endpoint's routes over ``callers`` (who asks), ``keys`` (what signs) and ``trail``."""

    def __init__(
        self,
        runtime: config.RuntimeConfig,
        *,
        callers: callers.Callers,
        keys: KeySource,
        trail: audit.AuditTrail,
        registry: metrics.Registry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.callers = callers
        self.keys = keys
        self.audit = trail
        self.clock = clock
        self._public_jwks: dict[str, dict[str, str]] = {}
        self._m_tokens = registry.counter(
            "kube_sts_token_decisions_total", "Token requests by endpoint, decision and reason.",
            ("endpoint", "decision", "reason"),
        )  # fmt: skip
        self.endpoints = {
            endpoint.name: Endpoint(endpoint, authorizer.Authorizer(endpoint), minter.Minter(endpoint, clock))
            for endpoint in runtime.endpoints
        }

    def routes(self, router: Router) -> None:
        """Register every endpoint's routes with ``router``."""
        for state in self.endpoints.values():
            self._endpoint_routes(router, state)

    def _endpoint_routes(self, router: Router, state: Endpoint) -> None:
        path = state.config.path
        name = state.config.name
        cache = (("cache-control", f"public, max-age={issuer.JWKS_MAX_AGE}"),)

        async def token(request: messages.Request) -> messages.Response:
            return await self.exchange(state, request)

        async def issuer_docs(request: messages.Request) -> messages.Response:
            endpoint = state.config
            documents = issuer.issuer_docs(
                endpoint.issuer.host,
                self._jwks(name),
                (endpoint.token.algorithm,),
                aws_session_tags=endpoint.token.aws_session_tags,
            )
            return messages.json_response(200, documents)

        async def discovery(request: messages.Request) -> messages.Response:
            endpoint = state.config
            signing = [endpoint.token.algorithm, *(key["alg"] for key in self._jwks(name))]
            documents = issuer.discovery(
                endpoint.issuer.host, signing, aws_session_tags=endpoint.token.aws_session_tags
            )
            return messages.json_response(200, documents, cache)

        async def certs(request: messages.Request) -> messages.Response:
            return messages.json_response(200, issuer.jwks(self._jwks(name)), cache)

        router.add_route("POST", f"{path}/token", token)
        router.add_route("GET", f"{path}/issuer-docs", issuer_docs)
        router.add_route("GET", f"{path}/.well-known/openid-configuration", discovery)
        router.add_route("GET", f"{path}/certs", certs)

    def _jwks(self, endpoint: str) -> list[dict[str, str]]:
        jwks = []
        for key in self.keys.provider(endpoint).published():
            jwk = self._public_jwks.get(key.kid)
            if jwk is None:
                if len(self._public_jwks) > 256:
                    self._public_jwks.clear()
                jwk = self._public_jwks[key.kid] = key.public_jwk()
            jwks.append(dict(jwk))
        return jwks

    async def exchange(self, state: Endpoint, request: messages.Request) -> messages.Response:
        """``POST {path}/token``: a Pod's projected token in, a token of ``state``'s issuer out."""
        endpoint = state.config.name
        identity: callers.Identity | None = None
        minted: minter.Minted | None = None
        try:
            token = callers.bearer_token(request.headers.get("authorization"))
            identity = await self.callers.identity(token)
            try:
                role = roles.role_of(state.config, identity.role_annotations, identity.account_annotations)
            except roles.RoleConflictError as conflict:
                raise messages.HTTPError(403, "role_conflict", conflict.message) from None
            subject = authorizer.Subject(
                cluster=self.runtime.cluster,
                namespace=identity.namespace,
                saname=identity.saname,
                pod=identity.pod,
                role=role,
                endpoint=endpoint,
            )
            if not state.authorizer.allows(subject):
                raise messages.HTTPError(403, "denied", f"this Pod's identity may not use endpoint {endpoint!r}")
            try:
                lifetime = state.config.lifetime_for(identity.lifetime, identity.account_annotations)
            except ValueError as problem:
                raise messages.HTTPError(403, "invalid_lifetime", f"kube-sts: {problem}") from None
            try:
                key = self.keys.provider(endpoint).signing_key()
            except keyset.KeySetError as exc:
                log.error("endpoint %s: no signing key: %s", endpoint, exc)
                raise messages.HTTPError(
                    503, "no_signing_key", f"endpoint {endpoint!r} has no key that can sign now; see the server log",
                    (("retry-after", guard.RETRY_AFTER),),
                ) from None  # fmt: skip
            minted = state.minter.mint(subject, key, lifetime)
        except messages.HTTPError as exc:
            decision = "deny" if exc.status in (401, 403) else "error"
            self._audit(endpoint, identity, decision, exc.code, None)
            raise
        except Exception:
            self._audit(endpoint, identity, "error", "internal_error", None)
            raise
        self._audit(endpoint, identity, "allow", "ok", minted)
        return messages.json_response(
            200, {"token": minted.token, "expires_at": minted.expires, "expires_in": minted.expires - minted.issued_at}
        )

    def _audit(
        self, endpoint: str, identity: callers.Identity | None, decision: str, reason: str, minted: minter.Minted | None
    ) -> None:
        self._m_tokens.inc(endpoint, decision, reason)
        self.audit.record(
            {
                "time": int(self.clock()),
                "event": "token",
                "endpoint": endpoint,
                "namespace": identity.namespace if identity else None,
                "serviceaccount": identity.saname if identity else None,
                "pod": identity.pod if identity else None,
                "decision": decision,
                "reason": reason,
                "kid": minted.kid if minted else None,
                "jti": minted.jti if minted else None,
                "exp": minted.expires if minted else None,
            }
        )
