"""Caller validation: which live Pod presents this ServiceAccount token?

Cheap checks come before expensive ones, so that nothing an unauthenticated client sends costs
an API call unless the cluster really issued it:

1. the token's shape, ``exp`` and ``aud`` (our audience, and no audience of the API server);
2. its signature, ``iss`` and ``nbf``/``iat`` against the cluster's own service-account issuer
   (``ClusterKeys``: ``/.well-known/openid-configuration`` and ``/openid/v1/jwks`` of the API
   server, readable by every ServiceAccount; refreshed every ``JWKS_REFRESH`` seconds and on an
   unknown ``kid`` at most once per ``JWKS_RETRY`` seconds), RS256 or ES256;
3. only then a TokenReview for our audience (authenticated, our audience in
   ``status.audiences``, a Pod binding), a metadata-only read of the bound Pod, whose uid
   must match, and a metadata-only read of its ServiceAccount (whose annotations may bind the
   Pod to a role: ``roles.role_of``; skipped when no endpoint has an injector).

Answers are remembered by a SHA-256 of the token: identities for ``cache_ttl`` seconds (never
past the token's ``exp``; bounded in entries and bytes; expired entries purged), refusals (401)
for ``FAILURE_TTL`` seconds (bounded). Concurrent requests with one uncached token share one
validation. An identity keeps only what rules and minting use: namespace, ServiceAccount, Pod
and the values of the endpoints' role annotations (``tremolo.io/<label>`` on the Pod, the
role bindings and token lifetimes on the ServiceAccount) and of the Pod's token lifetime annotation, never other
annotations; a role value longer than ``MAX_ROLE`` characters is kept as
``ROLE_TOO_LONG``, which no rule matches (``filter``: values outside printable ASCII).

When the cluster's keys cannot be read (the discovery binding removed, an API server without
issuer discovery), callers are not refused outright: a TokenReview is as authoritative as it
was before the local check existed, so the runtime falls back to it, at most
``FALLBACK_RATE`` new tokens per second (burst ``FALLBACK_BURST``); beyond that budget the answer
is 503 with ``Retry-After``. The runtime logs the problem once when it starts and once when it
ends, and the readiness check ``callers`` carries the reason (it stays ready: refusing
readiness would take every replica, and so every legitimate caller, out of the Service).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from kube_sts.runtime import config
from kube_sts.runtime.http import messages as web
from kube_sts.runtime.http import metrics
from kube_sts.runtime.kube import api as kubeapi

__all__ = [
    "FAILURE_TTL",
    "MAX_ROLE",
    "MAX_TOKEN",
    "ROLE_TOO_LONG",
    "Callers",
    "ClusterKeys",
    "Identity",
    "ReviewCache",
    "bearer_token",
    "unverified_claims",
]

log = logging.getLogger("kube_sts.callers")

HTTPError = web.HTTPError
T = TypeVar("T")
Call = Callable[..., Awaitable[Any]]

MAX_TOKEN = 16 * 1024
MAX_ROLE = 2048
"""Longest role annotation value kept (an AWS role ARN is at most 2048 characters)."""
ROLE_TOO_LONG = "\ufffd(role annotation too long)"
"""Kept instead of a longer role value: outside printable ASCII, so no rule matches it."""
FAILURE_TTL = 30.0
FAILURE_SIZE = 10_000
CACHE_BYTES = 16 * 1024 * 1024
LEEWAY = 60
"""Seconds of clock skew allowed on ``nbf`` and ``iat`` (``exp`` gets none: an expired token is refused)."""
JWKS_REFRESH = 300.0
JWKS_RETRY = 10.0
FALLBACK_RATE = 10.0
FALLBACK_BURST = 20.0
RETRY_AFTER = "5"
_ALGORITHMS = ("RS256", "ES256")
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """A validated caller: a ServiceAccount token bound to a live Pod."""

    namespace: str
    saname: str
    pod: str
    pod_uid: str
    roles: tuple[tuple[str, str], ...]
    """The Pod's role annotations (``tremolo.io/<label>`` of the configured injectors) only."""
    token_expires: int
    account_roles: tuple[tuple[str, str], ...] = ()
    """The ServiceAccount's role bindings and token lifetimes (``config.Endpoint.account_role_keys``
    and ``account_lifetime_keys`` of the endpoints) only."""
    lifetime: str | None = None
    """The Pod's ``kube-sts.tremolo.io/token-lifetime`` annotation, if any (at most ``MAX_ROLE`` characters)."""

    @property
    def role_annotations(self) -> Mapping[str, str]:
        return dict(self.roles)

    @property
    def account_annotations(self) -> Mapping[str, str]:
        return dict(self.account_roles)

    def cost(self) -> int:
        """Roughly the bytes this identity holds (for the cache's byte bound)."""
        pairs = (*self.roles, *self.account_roles)
        strings = [self.namespace, self.saname, self.pod, self.pod_uid, self.lifetime or ""]
        strings += [s for pair in pairs for s in pair]
        return 256 + sum(64 + len(s) for s in strings)


class ReviewCache:
    """Validated identities by token digest, each until a deadline.

    Bounded in entries (``size``) and bytes (``max_bytes``); the least recently used go first,
    and expired entries are purged at least once per ``sweep`` seconds.
    """

    def __init__(self, size: int, max_bytes: int = CACHE_BYTES, sweep: float = 1.0) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.sweep = sweep
        self.bytes = 0
        self._entries: collections.OrderedDict[bytes, tuple[Identity, float, int]] = collections.OrderedDict()
        self._next_sweep = 0.0

    def get(self, digest: bytes, now: float) -> Identity | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry[1]:
            self._drop(digest)
            return None
        self._entries.move_to_end(digest)
        return entry[0]

    def put(self, digest: bytes, identity: Identity, until: float, now: float) -> None:
        if self.size <= 0 or until <= now:
            return
        self.purge(now)
        if digest in self._entries:
            self._drop(digest)
        cost = identity.cost()
        self._entries[digest] = (identity, until, cost)
        self.bytes += cost
        while self._entries and (len(self._entries) > self.size or self.bytes > self.max_bytes):
            self._drop(next(iter(self._entries)))

    def purge(self, now: float) -> None:
        """Drop expired entries (at most once per ``sweep`` seconds)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep
        for digest in [d for d, (_, until, _) in self._entries.items() if now >= until]:
            self._drop(digest)

    def _drop(self, digest: bytes) -> None:
        self.bytes -= self._entries.pop(digest)[2]

    def __len__(self) -> int:
        return len(self._entries)


class _Failures:
    """Recent refusals by token digest, each for ``ttl`` seconds; bounded, oldest first out."""

    def __init__(self, size: int = FAILURE_SIZE, ttl: float = FAILURE_TTL) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: collections.OrderedDict[bytes, tuple[HTTPError, float]] = collections.OrderedDict()

    def get(self, digest: bytes, now: float) -> HTTPError | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[digest]
            return None
        return entry[0]

    def put(self, digest: bytes, error: HTTPError, now: float) -> None:
        if self.size <= 0 or self.ttl <= 0:
            return
        while self._entries:  # one ttl for all: insertion order is expiry order
            oldest = next(iter(self._entries.values()))
            if now < oldest[1] and len(self._entries) < self.size:
                break
            self._entries.popitem(last=False)
        self._entries.pop(digest, None)
        self._entries[digest] = (error, now + self.ttl)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class _Budget:
    """A token bucket: ``rate`` per second, at most ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._level = min(self.burst, self._level + (now - self._at) * self.rate)
            self._at = now
            if self._level < 1.0:
                return False
            self._level -= 1.0
            return True


# -- tokens ------------------------------------------------------------------------------------


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or an ``HTTPError`` 401.

    Only the header's shape is checked here; whether the token is a JWT is checked when it is
    not in the review cache (a cached token was checked when it was first seen).
    """
    if not header:
        raise HTTPError(401, "missing_token", "send the ServiceAccount token as 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPError(401, "malformed_token", "the Authorization header is not 'Bearer <token>'")
    if len(token) > MAX_TOKEN:
        raise HTTPError(413, "header_too_large", f"the token is longer than {MAX_TOKEN} bytes")
    return token


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _segment_json(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64(segment))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise HTTPError(401, "malformed_token", "the bearer token is not a JWT") from None
    if not isinstance(value, dict):
        raise HTTPError(401, "malformed_token", "the bearer token is not a JWT")
    return value


def unverified_claims(token: str) -> Mapping[str, Any]:
    """The payload of a JWT without checking it: used only to reject early, never to accept."""
    if _JWT.fullmatch(token) is None:
        raise HTTPError(401, "malformed_token", "the bearer token is not a JWT")
    return _segment_json(token.split(".")[1])


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    claimed = claims.get("aud")
    if isinstance(claimed, str):
        return [claimed]
    return [a for a in claimed if isinstance(a, str)] if isinstance(claimed, list) else []


# -- the cluster's service-account keys ---------------------------------------------------------

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _int(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError("not a base64url string")
    return int.from_bytes(_b64(value), "big")


def _public_key(jwk: Mapping[str, Any]) -> tuple[str, PublicKey] | None:
    """(algorithm, key) for an RS256 or ES256 signing JWK; None for keys we do not use."""
    if jwk.get("use", "sig") != "sig":
        return None
    kty, alg = jwk.get("kty"), jwk.get("alg")
    if kty == "RSA" and alg in (None, "RS256"):
        key = rsa.RSAPublicNumbers(_int(jwk.get("e")), _int(jwk.get("n"))).public_key()
        return ("RS256", key) if key.key_size >= 2048 else None
    if kty == "EC" and jwk.get("crv") == "P-256" and alg in (None, "ES256"):
        numbers = ec.EllipticCurvePublicNumbers(_int(jwk.get("x")), _int(jwk.get("y")), ec.SECP256R1())
        return "ES256", numbers.public_key()
    return None


class ClusterKeys:
    """The cluster's service-account issuer and signing keys, as the API server publishes them."""

    def __init__(
        self,
        fetch: Callable[[], tuple[str, dict[str, Any]]],
        *,
        refresh: float = JWKS_REFRESH,
        retry: float = JWKS_RETRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.refresh = refresh
        self.retry = retry
        self.clock = clock
        self.issuer: str | None = None
        self.keys: dict[str, tuple[str, PublicKey]] = {}
        self.problem = "the cluster's service-account keys have not been read yet"
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._failing = False
        self._lock = threading.Lock()
        self._running: concurrent.futures.Future[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    def stale(self) -> bool:
        return self._loaded_at is None or self.clock() - self._loaded_at >= self.refresh

    def may_fetch(self) -> bool:
        """Whether a fetch may start now (at most one per ``retry`` seconds)."""
        return self._attempted_at is None or self.clock() - self._attempted_at >= self.retry

    def get(self, kid: str) -> tuple[str, PublicKey] | None:
        return self.keys.get(kid)

    def fetch_now(self) -> None:
        """Read the issuer and JWKS (blocking); keeps the previous keys when it fails."""
        self._attempted_at = self.clock()
        try:
            issuer, jwks = self._fetch()
            keys: dict[str, tuple[str, PublicKey]] = {}
            for jwk in jwks["keys"]:
                if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                    continue
                try:
                    parsed = _public_key(jwk)
                except (ValueError, TypeError, binascii.Error):
                    continue
                if parsed is not None:
                    keys[jwk["kid"]] = parsed
            if not keys:
                raise kubeapi.APIError(200, "BadResponse", "the service-account JWKS holds no RS256 or ES256 key")
        except kubeapi.APIError as exc:
            problem = (
                f"cannot read the cluster's service-account keys (GET /.well-known/openid-configuration and "
                f"/openid/v1/jwks: {exc}); "
            )
            problem += (
                "the keys read before stay in use"
                if self.loaded
                else f"callers are checked by TokenReview alone, at most {FALLBACK_RATE:g} new tokens per second"
            )
            with self._lock:
                self.problem = problem
                first = not self._failing
                self._failing = True
            if first:
                log.warning("%s", problem)
            return
        with self._lock:
            self.issuer, self.keys = issuer, keys
            self._loaded_at = self.clock()
            recovered = self._failing
            self._failing = False
            self.problem = ""
        if recovered:
            log.warning("the cluster's service-account keys are readable again (%d key(s))", len(keys))

    def fetch(self, executor: concurrent.futures.Executor) -> concurrent.futures.Future[None]:
        """Start one fetch on ``executor`` unless one is running; the running one otherwise."""
        with self._lock:
            if self._running is None or self._running.done():
                self._attempted_at = self.clock()
                self._running = executor.submit(self.fetch_now)
            return self._running

    def status(self) -> tuple[bool, str]:
        """Readiness: always ready (see the module docstring); the detail says what is wrong."""
        with self._lock:
            if self._failing or not self.loaded:
                return True, f"degraded: {self.problem}"
            return True, f"cluster service-account issuer {self.issuer}: {len(self.keys)} key(s)"


def _verify(algorithm: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    try:
        if algorithm == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            return True
        if algorithm == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and len(signature) == 64:
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            der = utils.encode_dss_signature(r, s)
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


# -- validation ---------------------------------------------------------------------------------


class Callers:
    """Validates callers' tokens for one runtime (see the module docstring).

    ``call`` runs a blocking ``kube`` method on the API pool and turns outages into 503s
    (``App._call``); ``executor`` is that pool, used here to read the cluster's keys.
    """

    def __init__(
        self,
        runtime: config.RuntimeConfig,
        kube: kubeapi.KubeAPI,
        *,
        call: Call,
        executor: concurrent.futures.Executor,
        registry: metrics.Registry,
        clock: Callable[[], float] = time.time,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        api_timeout: float = 3.0,
        cluster_keys: ClusterKeys | None = None,
    ) -> None:
        self.runtime = runtime
        self.kube = kube
        self.call = call
        self.executor = executor
        self.clock = clock
        self.cache_ttl = cache_ttl
        self.api_timeout = api_timeout
        self.cache = ReviewCache(cache_size)
        self.failures = _Failures()
        self.budget = _Budget(FALLBACK_RATE, FALLBACK_BURST)
        self.cluster_keys = cluster_keys or ClusterKeys(kube.service_account_issuer)
        self.labels = tuple(sorted({e.injector.label_key for e in runtime.endpoints if e.injector is not None}))
        self.account_keys = tuple(
            sorted({key for e in runtime.endpoints for key in (*e.account_role_keys, *e.account_lifetime_keys)})
        )
        self._api_audiences = tuple(config.API_SERVER_AUDIENCES) + tuple(runtime.api_audiences)
        self._validating: dict[bytes, asyncio.Future[tuple[Identity | None, HTTPError | None]]] = {}
        self.m_cache = registry.counter(
            "kube_sts_token_review_cache_total",
            "Caller validations: from the cache (hit), a remembered refusal (refused), shared with a concurrent "
            "request (shared), or new (miss).",
            ("result",),
        )
        self.m_local = registry.counter(
            "kube_sts_caller_signature_checks_total",
            "Local checks of callers' tokens against the cluster's service-account keys, by result "
            "(verified, refused, fallback: keys unreadable and TokenReview budget left, over_budget).",
            ("result",),
        )

    def status(self) -> tuple[bool, str]:
        return self.cluster_keys.status()

    def start(self) -> None:
        """Read the cluster's keys (blocking; an application startup hook)."""
        self.cluster_keys.fetch_now()

    async def identity(self, token: str) -> Identity:
        """Validate ``token`` or raise a 401/503 ``HTTPError`` (see the module docstring)."""
        now = self.clock()
        digest = hashlib.sha256(token.encode("latin-1")).digest()
        cached = self.cache.get(digest, now)
        if cached is not None:
            self.m_cache.inc("hit")
            return cached
        refused = self.failures.get(digest, now)
        if refused is not None:
            self.m_cache.inc("refused")
            raise HTTPError(refused.status, refused.code, refused.message, refused.headers)
        pending = self._validating.get(digest)
        if pending is not None:
            self.m_cache.inc("shared")
            identity, error = await asyncio.shield(pending)
            if error is not None:
                raise HTTPError(error.status, error.code, error.message, error.headers)
            if identity is not None:
                return identity
            return await self.identity(token)  # the validation was abandoned: try again
        self.m_cache.inc("miss")
        outcome: asyncio.Future[tuple[Identity | None, HTTPError | None]] = asyncio.get_running_loop().create_future()
        self._validating[digest] = outcome
        try:
            identity = await self._validate(token, now)
        except HTTPError as exc:
            if exc.status == 401:
                self.failures.put(digest, exc, self.clock())
            outcome.set_result((None, exc))
            raise
        else:
            later = self.clock()
            self.cache.put(digest, identity, min(later + self.cache_ttl, float(identity.token_expires)), later)
            outcome.set_result((identity, None))
            return identity
        finally:
            del self._validating[digest]
            if not outcome.done():  # cancelled or failed unexpectedly: waiters validate themselves
                outcome.set_result((None, None))

    async def _validate(self, token: str, now: float) -> Identity:
        if _JWT.fullmatch(token) is None:
            raise HTTPError(401, "malformed_token", "the bearer token is not a JWT")
        header_segment, payload_segment, signature_segment = token.split(".")
        header = _segment_json(header_segment)
        claims = _segment_json(payload_segment)
        expires = claims.get("exp")
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise HTTPError(401, "malformed_token", "the token has no integer 'exp' claim")
        if expires <= now:
            raise HTTPError(401, "token_expired", "the ServiceAccount token has expired")
        audience = self.runtime.sts_audience
        claimed = _audiences(claims)
        if audience not in claimed:
            raise HTTPError(401, "wrong_audience", f"the token's audience must be {audience!r}")
        try:
            signature = _b64(signature_segment)
        except (ValueError, binascii.Error):
            raise HTTPError(401, "malformed_token", "the bearer token is not a JWT") from None
        await self._check_signature(header, claims, f"{header_segment}.{payload_segment}".encode("ascii"), signature)
        api = [a for a in claimed if config.api_server_audience(a, self._api_audiences + self._issuer())]
        if api:
            raise HTTPError(
                401,
                "wrong_audience",
                f"the token is also valid for the Kubernetes API server ({api[0]!r}); "
                f"project one for {audience!r} only",
            )
        return await self._review(token, expires)

    def _issuer(self) -> tuple[str, ...]:
        issuer = self.cluster_keys.issuer
        return (issuer,) if issuer else ()

    async def _fetch_keys(self) -> None:
        running = self.cluster_keys.fetch(self.executor)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), self.api_timeout)

    async def _check_signature(
        self, header: Mapping[str, Any], claims: Mapping[str, Any], signing_input: bytes, signature: bytes
    ) -> None:
        keys = self.cluster_keys
        if not keys.loaded and keys.may_fetch():
            await self._fetch_keys()
        if not keys.loaded:
            if self.budget.take():
                self.m_local.inc("fallback")
                return
            self.m_local.inc("over_budget")
            raise HTTPError(
                503,
                "apiserver_unavailable",
                "the cluster's service-account keys cannot be read and the TokenReview budget is spent; try again",
                (("retry-after", RETRY_AFTER),),
            )
        if keys.stale() and keys.may_fetch():
            keys.fetch(self.executor)  # in the background; the current keys stay in use meanwhile
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in _ALGORITHMS or not isinstance(kid, str):
            self._refuse("the token is not an RS256 or ES256 JWT with a kid")
        assert isinstance(kid, str)
        found = keys.get(kid)
        if found is None and keys.may_fetch():  # the cluster may have rotated its keys
            await self._fetch_keys()
            found = keys.get(kid)
        if found is None or found[0] != algorithm or not _verify(found[0], found[1], signing_input, signature):
            self._refuse("the token is not signed by this cluster's service-account keys")
        if claims.get("iss") != keys.issuer:
            self._refuse("the token was not issued by this cluster's service-account issuer")
        now = self.clock()
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not isinstance(value, int | float) or value - LEEWAY > now):
                self._refuse(f"the token's {name!r} is in the future")
        self.m_local.inc("verified")

    def _refuse(self, message: str) -> None:
        self.m_local.inc("refused")
        raise HTTPError(401, "invalid_token", message)

    async def _review(self, token: str, expires: int) -> Identity:
        audience = self.runtime.sts_audience
        review: kubeapi.Review = await self.call("tokenreview", self.kube.token_review, token, [audience])
        if not review.authenticated:
            raise HTTPError(401, _review_failure(review.error), "the API server did not accept the token")
        if audience not in review.audiences:
            raise HTTPError(401, "wrong_audience", f"the token's audience must be {audience!r}")
        account = review.service_account
        if account is None:
            raise HTTPError(401, "invalid_token", "the token does not belong to a ServiceAccount")
        pod_name, pod_uid = review.pod_name, review.pod_uid
        if pod_name is None or pod_uid is None:
            raise HTTPError(401, "unbound_token", "the token is not bound to a Pod; use a projected token")
        namespace, saname = account
        try:
            pod: kubeapi.ObjectMeta = await self.call("pod", self.kube.pod_metadata, namespace, pod_name)
        except kubeapi.NotFoundError:
            raise HTTPError(401, "pod_not_found", "the token's Pod no longer exists") from None
        if pod.uid != pod_uid:
            raise HTTPError(401, "pod_mismatch", "the token's Pod no longer exists (its name is reused)")
        bindings: Mapping[str, str] = {}
        if self.account_keys:
            try:
                meta: kubeapi.ObjectMeta = await self.call(
                    "serviceaccount", self.kube.service_account_metadata, namespace, saname
                )
            except kubeapi.NotFoundError:
                raise HTTPError(401, "invalid_token", "the token's ServiceAccount no longer exists") from None
            bindings = meta.annotations
        lifetime = pod.annotations.get(config.LIFETIME_ANNOTATION)
        return Identity(
            namespace,
            saname,
            pod_name,
            pod_uid,
            _kept(pod.annotations, self.labels),
            expires,
            _kept(bindings, self.account_keys),
            None if lifetime is None else lifetime[:MAX_ROLE],
        )


def _kept(annotations: Mapping[str, str], keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The values of ``keys`` in ``annotations``; one longer than ``MAX_ROLE`` becomes ``ROLE_TOO_LONG``."""
    return tuple(
        (key, value if len(value) <= MAX_ROLE else ROLE_TOO_LONG)
        for key in keys
        if (value := annotations.get(key)) is not None
    )


def _review_failure(error: str) -> str:
    """A stable code for an unauthenticated TokenReview (the API server's text is not stable)."""
    lowered = error.lower()
    if "expired" in lowered:
        return "token_expired"
    if "audience" in lowered:
        return "wrong_audience"
    return "invalid_token"
