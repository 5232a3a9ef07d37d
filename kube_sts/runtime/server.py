"""The token service: a small ASGI application served by uvicorn over TLS.

Routes, for every endpoint of the runtime config under its ``path``:

- ``POST {path}/token`` with ``Authorization: Bearer <projected ServiceAccount token>`` answers
  ``{"token": "<JWT>", "expires_at": <epoch seconds>, "expires_in": <seconds>}``;
- ``GET {path}/issuer-docs``: ``{"discovery": {...}, "keys": {"keys": [...]}}``;
- ``GET {path}/.well-known/openid-configuration`` and ``GET {path}/certs`` (JWKS, cached by
  clients for ``issuer.JWKS_MAX_AGE`` seconds);

and ``GET /healthz``, ``/readyz`` (config and keys loaded, API server answered) and ``/metrics``.

Callers are validated by ``callers.Callers``: the token's signature, issuer and audience are
checked locally against the cluster's own service-account keys first, so that only tokens the
cluster really signed cost a TokenReview (audience, Pod binding) and a metadata-only read of the
bound Pod; answers and refusals are cached briefly. API server calls run on a thread pool with a
timeout; when it cannot be reached the answer is 503 with ``Retry-After``.

Errors are JSON ``{"error": "<stable code>", "message": "..."}``: 400 malformed request, 401
token problems (``missing_token``, ``malformed_token``, ``token_expired``, ``wrong_audience``,
``invalid_token``, ``unbound_token``, ``pod_not_found``, ``pod_mismatch``), 403 ``denied``,
404 ``not_found``, 405 ``method_not_allowed``, 408 ``request_timeout``, 413 ``body_too_large`` /
``header_too_large``, 500 ``internal_error``, 503 ``apiserver_unavailable`` / ``apiserver_error``
/ ``no_signing_key`` / ``too_many_connections`` (the limits are ``limits.Limits``). Each token decision
writes one JSON line to the audit trail (standard output; operational logs go to standard
error); tokens and keys are never logged.

Extension points (each a line in ``build()`` or ``main()``):

- more routes, e.g. the admission webhook: ``app.add_route("POST", f"/mutate/{endpoint.name}",
  handler, max_body=...)`` where ``handler`` is an ``async (web.Request) -> web.Response``
  callable (raise ``web.HTTPError`` for error answers; route modules import ``web``,
  not this module); add the call in ``build()`` where it is marked;
- background services (key manager, certificate manager): ``app.on_startup`` / ``app.on_shutdown``
  take plain callables, run in order when uvicorn starts and stops the application;
- readiness: ``app.readiness_checks`` takes ``() -> (ready, reason)`` callables;
- TLS: ``serve()`` takes the ``ssl.SSLContext`` uvicorn uses for every handshake; the TLS
  manager's context hands each new handshake the newest certificate, so renewals need no restart.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, TextIO, TypeVar

import kubernetes.config
import orjson
import uvicorn

from kube_sts.runtime import config
from kube_sts.runtime.http import limits, metrics, transport
from kube_sts.runtime.http import messages as web
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.tls import manager as tlsmanager
from kube_sts.runtime.tokens import authorizer, callers, issuer, minter
from kube_sts.runtime.webhook import admission as webhook

__all__ = [
    "App",
    "AuditTrail",
    "HTTPError",
    "Identity",
    "Request",
    "Response",
    "build",
    "error_response",
    "json_response",
    "main",
    "serve",
    "uvicorn_server",
]

log = logging.getLogger("kube_sts.server")

CONFIG_PATH = pathlib.Path(config.CONFIG_PATH)
MAX_BODY = 64 * 1024
MAX_HEADERS = limits.MAX_HEADERS
MAX_TOKEN = callers.MAX_TOKEN
RETRY_AFTER = "5"
API_PROBE_INTERVAL = 30.0

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# The request/response types live in ``web`` so route modules need not import this one.
Request = web.Request
Response = web.Response
HTTPError = web.HTTPError
Handler = web.Handler
json_response = web.json_response
error_response = web.error_response


@dataclasses.dataclass(frozen=True, slots=True)
class _Route:
    handler: Handler
    max_body: int
    name: str


class KeyProvider(Protocol):
    """One endpoint's keys (``keymanager.KeyProvider``)."""

    def signing_key(self) -> keyset.Key: ...

    def published(self) -> tuple[keyset.Key, ...]: ...


class KeySource(Protocol):
    """Every endpoint's keys (``keymanager.KeyManager``)."""

    def provider(self, endpoint: str) -> KeyProvider: ...

    def status(self) -> tuple[bool, tuple[str, ...]]: ...


Identity = callers.Identity
bearer_token = callers.bearer_token
unverified_claims = callers.unverified_claims


class AuditTrail:
    """One JSON line per token decision on a stream.

    A plain stream rather than ``logging``: the logging machinery costs more per record than
    signing an ES256 token, and the audit trail is a data stream, not diagnostics. On a stream
    backed by a file descriptor (standard output, a file) the lines recorded during one turn of
    the event loop go out with one unbuffered ``write(2)`` at the end of the turn, ahead of the
    responses they describe (the server's writes are scheduled after them); without a running
    loop each line is written at once. Other streams (``io.StringIO``) get ``write``.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._fd: int | None = None
        if stream is not None:
            try:
                self._fd = stream.fileno()
            except (AttributeError, OSError, ValueError):  # io.StringIO and friends
                self._fd = None
            else:
                stream.flush()  # anything buffered before goes out first

    def record(self, fields: Mapping[str, Any]) -> None:
        if self.stream is None:
            return
        line = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
        if self._fd is None:
            with self._lock:
                self.stream.write(line.decode())
            return
        with self._lock:
            self._pending.append(line)
            if len(self._pending) > 1:
                return  # a flush is already due
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
        else:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the pending lines now."""
        with self._lock:
            if self._fd is None or not self._pending:
                return
            view = memoryview(b"".join(self._pending))
            self._pending.clear()
            while view:
                view = view[os.write(self._fd, view) :]


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    config: config.Endpoint
    authorizer: authorizer.Authorizer
    minter: minter.Minter


class App:
    """The ASGI application. ``kube`` and ``keys`` are the only outside dependencies."""

    def __init__(
        self,
        runtime: config.RuntimeConfig,
        *,
        kube: kubeapi.KubeAPI,
        keys: KeySource,
        registry: metrics.Registry | None = None,
        clock: Callable[[], float] = time.time,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        api_timeout: float = 3.0,
        api_threads: int = 8,
        audit: AuditTrail | None = None,
    ) -> None:
        self.runtime = runtime
        self.audit = audit if audit is not None else AuditTrail(sys.stdout)
        self.kube = kube
        self.keys = keys
        self.clock = clock
        self.api_timeout = api_timeout
        self.executor = concurrent.futures.ThreadPoolExecutor(api_threads, thread_name_prefix="kube-sts-api")
        self.routes: dict[str, dict[str, _Route]] = {}
        self._public_jwks: dict[str, dict[str, str]] = {}
        self.on_startup: list[Callable[[], object]] = []
        self.on_shutdown: list[Callable[[], object]] = []
        self.readiness_checks: list[Callable[[], tuple[bool, str]]] = []
        self._api_answered_at: float | None = None
        self._api_problem = "the API server has not been contacted yet"
        self._api_lock = threading.Lock()
        self.registry = registry if registry is not None else metrics.Registry()
        self._m_requests = self.registry.counter(
            "kube_sts_http_requests_total", "HTTP requests by route and status code.", ("route", "code")
        )
        self._m_duration = self.registry.histogram(
            "kube_sts_http_request_duration_seconds", "Time to answer an HTTP request.", ("route",)
        )
        self._m_tokens = self.registry.counter(
            "kube_sts_token_decisions_total", "Token requests by endpoint, decision and reason.",
            ("endpoint", "decision", "reason"),
        )  # fmt: skip
        self._m_api = self.registry.counter(
            "kube_sts_apiserver_requests_total", "Kubernetes API calls by call and outcome.", ("call", "outcome")
        )
        self._m_api_duration = self.registry.histogram(
            "kube_sts_apiserver_request_duration_seconds", "Kubernetes API call latency.", ("call",)
        )
        self.callers = callers.Callers(
            runtime,
            kube,
            call=self._call,
            executor=self.executor,
            registry=self.registry,
            clock=clock,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            api_timeout=api_timeout,
        )
        self.on_startup.append(self.callers.start)
        self.readiness_checks.append(self.callers.status)
        self.endpoints: dict[str, _Endpoint] = {}
        for endpoint in runtime.endpoints:
            state = _Endpoint(endpoint, authorizer.Authorizer(endpoint), minter.Minter(endpoint, clock))
            self.endpoints[endpoint.name] = state
            self._add_endpoint_routes(state)
        self.add_route("GET", config.HEALTH_PATH, self._healthz)
        self.add_route("GET", config.READY_PATH, self._readyz)
        self.add_route("GET", config.METRICS_PATH, self._metrics)

    # -- routing -----------------------------------------------------------------------------

    def add_route(self, method: str, path: str, handler: Handler, *, max_body: int = MAX_BODY) -> None:
        """Serve ``method path`` with ``handler``; bodies over ``max_body`` bytes get 413."""
        methods = self.routes.setdefault(path, {})
        if method in methods:
            raise ValueError(f"{method} {path} is already routed")
        methods[method] = _Route(handler, max_body, path)

    def _add_endpoint_routes(self, state: _Endpoint) -> None:
        path = state.config.path
        name = state.config.name

        async def token(request: Request) -> Response:
            return await self._token(state, request)

        async def issuer_docs(request: Request) -> Response:
            return json_response(200, issuer.issuer_docs(state.config, self._jwks(name)))

        async def discovery(request: Request) -> Response:
            keys = self._jwks(name)
            document = issuer.discovery(state.config, [key["alg"] for key in keys])
            return json_response(200, document, (("cache-control", f"public, max-age={issuer.JWKS_MAX_AGE}"),))

        async def certs(request: Request) -> Response:
            document = issuer.jwks(self._jwks(name))
            return json_response(200, document, (("cache-control", f"public, max-age={issuer.JWKS_MAX_AGE}"),))

        self.add_route("POST", f"{path}/token", token)
        self.add_route("GET", f"{path}/issuer-docs", issuer_docs)
        self.add_route("GET", f"{path}/.well-known/openid-configuration", discovery)
        self.add_route("GET", f"{path}/certs", certs)

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

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        try:
            route_name, response = await self._respond(scope, receive)
        except Exception:
            route_name, response = "unknown", self._internal_error(scope)
        headers = [(b"content-type", response.content_type.encode()), (b"content-length", b"%d" % len(response.body))]
        if response.headers:
            headers.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})
        self._m_requests.inc(route_name, str(response.status))
        self._m_duration.observe(time.perf_counter() - started, route_name)

    async def _respond(self, scope: Scope, receive: Receive) -> tuple[str, Response]:
        path: str = scope["path"]
        methods = self.routes.get(path)
        if methods is None:
            await _drain(receive)
            return "unknown", error_response(404, "not_found", f"no route for {path}")
        route = methods.get(scope["method"])
        if route is None:
            await _drain(receive)
            allow = ", ".join(sorted(methods))
            return path, error_response(
                405, "method_not_allowed", f"{path} answers {allow}", (("allow", allow),)
            )  # fmt: skip
        try:
            headers = limits.request_headers(scope["headers"], MAX_HEADERS)
            body = await _read_body(receive, headers.get("content-length"), route.max_body)
            client = scope.get("client") or ("", 0)
            request = Request(scope["method"], path, headers, body, str(client[0]))
            return path, await route.handler(request)
        except HTTPError as exc:
            return path, error_response(exc.status, exc.code, exc.message, exc.headers)
        except Exception:
            return path, self._internal_error(scope)

    def _internal_error(self, scope: Scope) -> Response:
        log.exception("%s %s failed", scope.get("method"), scope.get("path"))
        return error_response(500, "internal_error", "internal error; see the server log")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.on_startup:
                        await asyncio.to_thread(hook)
                    self.executor.submit(self._probe_api)
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.on_shutdown:
                    try:
                        await asyncio.to_thread(hook)
                    except Exception:
                        log.exception("shutdown hook failed")
                self.executor.shutdown(wait=False, cancel_futures=True)
                self.audit.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the API server ------------------------------------------------------------------------

    def _answered(self) -> None:
        with self._api_lock:
            self._api_answered_at = time.monotonic()
            self._api_problem = ""

    def _unreachable(self, problem: str) -> bool:
        """Record an outage; True when the API server had answered until now."""
        with self._api_lock:
            was_up = self._api_answered_at is not None
            self._api_answered_at = None
            self._api_problem = problem
        return was_up

    def _probe_api(self) -> None:
        try:
            self.kube.version()
        except kubeapi.UnavailableError as exc:
            self._unreachable(str(exc))
        except kubeapi.APIError:
            self._answered()
        else:
            self._answered()

    async def _call(self, call: str, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking client call on the pool; 503 when the API server cannot answer in time."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self.executor, function, *args), self.api_timeout)
        except (TimeoutError, kubeapi.UnavailableError) as exc:
            outcome = "unavailable"
            problem = f"{call}: {exc}" if str(exc) else f"{call}: no answer within {self.api_timeout}s"
            if self._unreachable(problem):  # one line per outage, not one per request
                log.warning("Kubernetes API unavailable: %s", problem)
            raise HTTPError(
                503,
                "apiserver_unavailable",
                "the Kubernetes API server cannot be reached; try again",
                (("retry-after", RETRY_AFTER),),
            ) from None
        except kubeapi.NotFoundError:
            outcome = "not_found"
            self._answered()
            raise
        except kubeapi.APIError as exc:
            outcome = "error"
            self._answered()
            log.error("Kubernetes API refused %s: %s", call, exc)
            raise HTTPError(
                503,
                "apiserver_error",
                f"the Kubernetes API server refused the {call}; see the server log",
                (("retry-after", RETRY_AFTER),),
            ) from None
        finally:
            self._m_api.inc(call, outcome)
            self._m_api_duration.observe(time.perf_counter() - started, call)
        self._answered()
        return result

    # -- token exchange ------------------------------------------------------------------------

    async def identity(self, token: str) -> Identity:
        """Validate ``token`` (``callers.Callers.identity``) or raise a 401/503 ``HTTPError``."""
        return await self.callers.identity(token)

    async def _token(self, state: _Endpoint, request: Request) -> Response:
        endpoint = state.config.name
        identity: Identity | None = None
        minted: minter.Minted | None = None
        try:
            token = bearer_token(request.headers.get("authorization"))
            identity = await self.identity(token)
            subject = authorizer.Subject(
                cluster=self.runtime.cluster,
                namespace=identity.namespace,
                saname=identity.saname,
                pod=identity.pod,
                role=authorizer.role_of(state.config, identity.role_annotations),
                endpoint=endpoint,
            )
            if not state.authorizer.allows(subject):
                raise HTTPError(403, "denied", f"this Pod's identity may not use endpoint {endpoint!r}")
            try:
                key = self.keys.provider(endpoint).signing_key()
            except keyset.KeySetError as exc:
                log.error("endpoint %s: no signing key: %s", endpoint, exc)
                raise HTTPError(
                    503, "no_signing_key", f"endpoint {endpoint!r} has no key that can sign now; see the server log",
                    (("retry-after", RETRY_AFTER),),
                ) from None  # fmt: skip
            minted = state.minter.mint(subject, key)
        except HTTPError as exc:
            decision = "deny" if exc.status in (401, 403) else "error"
            self._audit(endpoint, identity, decision, exc.code, None)
            raise
        except Exception:
            self._audit(endpoint, identity, "error", "internal_error", None)
            raise
        self._audit(endpoint, identity, "allow", "ok", minted)
        return json_response(
            200, {"token": minted.token, "expires_at": minted.expires, "expires_in": minted.expires - minted.issued_at}
        )

    def _audit(
        self, endpoint: str, identity: Identity | None, decision: str, reason: str, minted: minter.Minted | None
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

    # -- health --------------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        keys_ready, key_reasons = self.keys.status()
        with self._api_lock:
            answered_at = self._api_answered_at
        if answered_at is None or time.monotonic() - answered_at > API_PROBE_INTERVAL:
            try:
                await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self.executor, self._probe_api), 2.0)
            except TimeoutError:
                self._unreachable("the API server did not answer within 2s")
        with self._api_lock:
            api_ready, api_problem = self._api_answered_at is not None, self._api_problem
        checks: dict[str, Any] = {
            "config": {"ready": True, "detail": f"{len(self.endpoints)} endpoint(s)"},
            "keys": {"ready": keys_ready, "detail": list(key_reasons)},
            "apiserver": {"ready": api_ready, "detail": "answered" if api_ready else api_problem},
        }
        ready = keys_ready and api_ready
        for index, check in enumerate(self.readiness_checks):
            ok, detail = check()
            checks[f"check{index}"] = {"ready": ok, "detail": detail}
            ready = ready and ok
        return json_response(200 if ready else 503, {"ready": ready, "checks": checks})

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.registry.render(), metrics.CONTENT_TYPE)


async def _drain(receive: Receive) -> None:
    message: Message = {"more_body": True}
    for _ in range(1024):
        if not message.get("more_body", False):
            return
        message = await receive()
        if message["type"] != "http.request":
            return


async def _read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise HTTPError(400, "bad_request", "Content-Length is not a number") from None
        if declared > limit:
            raise HTTPError(413, "body_too_large", f"the request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise HTTPError(400, "bad_request", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, "body_too_large", f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# -- process wiring --------------------------------------------------------------------------


def build(
    runtime: config.RuntimeConfig, *, kube: kubeapi.KubeAPI, keys_dir: pathlib.Path, tls: tlsmanager.TLSManager
) -> App:
    """The production application: key manager, TLS manager, routes and background services.

    The TLS manager's ``server_context()`` is what the server listens with; it starts and stops
    with the application, its status is a readiness check, and its CA bundle is the one the
    admission webhook hands to sidecars.
    """
    keys = keymanager.KeyManager.from_config(runtime, keys_dir=keys_dir, secrets=keymanager.KubeSecrets(kube))
    app = App(runtime, kube=kube, keys=keys)
    app.on_startup.append(keys.start)
    app.on_shutdown.append(keys.stop)
    app.on_startup.append(tls.start)
    app.on_shutdown.append(tls.stop)
    app.readiness_checks.append(tls.status)
    webhook.add_routes(app, runtime, tls.ca_bundle)
    return app


def uvicorn_server(
    app: App,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    log_level: str = "info",
    bounds: limits.Limits = limits.LIMITS,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` within ``bounds``; TLS handshakes use ``ssl_context`` (the same object)."""

    def factory(_config: object, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        assert ssl_context is not None
        return ssl_context

    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        server_header=False,
        log_config=None,
        log_level=log_level,
        timeout_keep_alive=bounds.keep_alive,
        proxy_headers=False,
        http=transport.protocol_class(bounds),
        ws="none",
        ssl_context_factory=factory if ssl_context is not None else None,
    )
    return transport.Server(uv_config, bounds)


def serve(app: App, *, host: str, port: int, ssl_context: ssl.SSLContext | None, log_level: str = "info") -> None:
    """Run ``app`` until SIGTERM/SIGINT."""
    uvicorn_server(app, host=host, port=port, ssl_context=ssl_context, log_level=log_level).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube-sts-server", description="kube-sts token service")
    parser.add_argument("--config", type=pathlib.Path, default=CONFIG_PATH, help="runtime config.json")
    parser.add_argument("--keys-dir", type=pathlib.Path, default=keymanager.KEYS_DIR, help="mounted key sets")
    parser.add_argument(
        "--tls-dir",
        type=pathlib.Path,
        default=tlsmanager.TLS_DIR,
        help="tls.crt, tls.key and ca.crt (cert-manager mode)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104 (in a Pod)
    parser.add_argument("--port", type=int, default=None, help="port (default: the config's port)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        runtime = config.RuntimeConfig.model_validate_json(args.config.read_bytes())
    except (OSError, ValueError) as exc:
        print(f"kube-sts-server: cannot load {args.config}: {config.one_line(exc)}", file=sys.stderr)
        return 1
    try:
        kube = kubeapi.KubeAPI.from_environment()
    except kubernetes.config.ConfigException as exc:
        print(f"kube-sts-server: no in-cluster credentials and no kubeconfig: {exc}", file=sys.stderr)
        return 1
    # The serving certificate: from the mounted files (cert-manager) or from the TLS Secret the
    # runtime keeps itself. The manager's context hands every new handshake the newest certificate,
    # so a renewal needs no restart; it starts (and loads a first certificate) with the app.
    tls = tlsmanager.TLSManager(runtime, kube, directory=args.tls_dir)
    app = build(runtime, kube=kube, keys_dir=args.keys_dir, tls=tls)
    serve(
        app, host=args.host, port=args.port or runtime.port, ssl_context=tls.server_context(), log_level=args.log_level
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
