"""The token service process: its parts wired into one ASGI application, served by uvicorn over TLS.

``App`` composes the parts, each in its own module and each registering its own routes:

- ``http.router.Router``: routing, request bounds (``http.limits``), lifespan hooks, request metrics;
- ``kube.guard.Guard``: API server calls on a thread pool with a timeout; outages answer 503 with
  ``Retry-After``;
- ``tokens.callers.Callers``: caller validation (local signature check first, then TokenReview
  and the bound Pod), its cache and request coalescing;
- ``tokens.service.TokenService``: each endpoint's ``{path}/token`` exchange, issuer documents
  and the audit trail (``tokens.audit``);
- readiness: ``GET /healthz``, ``/readyz`` (config and keys loaded, API server answered, every
  ``readiness_checks`` callable) and ``/metrics``.

Errors are JSON ``{"error": "<stable code>", "message": "..."}``: 400 malformed request, 401
token problems (``missing_token``, ``malformed_token``, ``token_expired``, ``wrong_audience``,
``invalid_token``, ``unbound_token``, ``pod_not_found``, ``pod_mismatch``), 403 ``denied``,
``role_conflict`` (the Pod names another role than its ServiceAccount is bound to) or
``invalid_lifetime`` (the Pod's or its ServiceAccount's token lifetime is outside the endpoint's bounds),
404 ``not_found``, 405 ``method_not_allowed``, 408 ``request_timeout``, 413 ``body_too_large`` /
``header_too_large``, 500 ``internal_error``, 503 ``apiserver_unavailable`` / ``apiserver_error``
/ ``no_signing_key`` / ``too_many_connections`` (the limits are ``limits.Limits``). Each token decision
writes one JSON line to the audit trail (standard output; operational logs go to standard
error); tokens and keys are never logged.

Extension points (each a line in ``build()`` or ``main()``):

- more routes, e.g. the admission webhook: ``webhook.admission.add_routes(app, ...)`` calls
  ``app.add_route(method, path, handler, max_body=...)`` where ``handler`` is an
  ``async (messages.Request) -> messages.Response`` callable;
- background services (key manager, certificate manager): ``app.on_startup`` / ``app.on_shutdown``
  take plain callables, run in order when uvicorn starts and stops the application;
- readiness: ``app.readiness_checks`` takes ``() -> (ready, reason)`` callables;
- TLS: ``serve()`` takes the ``ssl.SSLContext`` uvicorn uses for every handshake; the TLS
  manager's context hands each new handshake the newest certificate, so renewals need no restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import ssl
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kubernetes.config
import uvicorn

from kube_sts.runtime import config
from kube_sts.runtime.http import limits, messages, metrics, router, transport
from kube_sts.runtime.keys import keyset
from kube_sts.runtime.keys import manager as keymanager
from kube_sts.runtime.kube import api as kubeapi
from kube_sts.runtime.kube import guard
from kube_sts.runtime.tls import manager as tlsmanager
from kube_sts.runtime.tokens import audit, callers, service
from kube_sts.runtime.webhook import admission as webhook

__all__ = [
    "App",
    "AuditTrail",
    "HTTPError",
    "Identity",
    "Request",
    "Response",
    "build",
    "main",
    "serve",
    "uvicorn_server",
]

log = logging.getLogger("kube_sts.server")

CONFIG_PATH = pathlib.Path(config.CONFIG_PATH)
MAX_BODY = router.MAX_BODY

# The names a route or a test needs, from the modules that define them.
Request = messages.Request
Response = messages.Response
HTTPError = messages.HTTPError
Identity = callers.Identity
AuditTrail = audit.AuditTrail
KeySource = service.KeySource


class App(router.Router):
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
        super().__init__(registry if registry is not None else metrics.Registry())
        self.runtime = runtime
        self.audit = audit if audit is not None else AuditTrail(sys.stdout)
        self.kube = kube
        self.keys = keys
        self.clock = clock
        self.readiness_checks: list[Callable[[], tuple[bool, str]]] = []
        self.guard = guard.Guard(kube, self.registry, timeout=api_timeout, threads=api_threads)
        self.executor = self.guard.executor
        self.callers = callers.Callers(
            runtime,
            kube,
            call=self.guard.call,
            executor=self.executor,
            registry=self.registry,
            clock=clock,
            cache_ttl=cache_ttl,
            cache_size=cache_size,
            api_timeout=api_timeout,
        )
        self.tokens = service.TokenService(
            runtime, callers=self.callers, keys=keys, trail=self.audit, registry=self.registry, clock=clock
        )
        self.endpoints = self.tokens.endpoints
        self.on_startup += [self.callers.start, self.guard.start_probe]
        self.on_shutdown += [self.guard.shutdown, self.audit.flush]
        self.readiness_checks.append(self.callers.status)
        self.tokens.routes(self)
        self.add_route("GET", config.HEALTH_PATH, self._healthz)
        self.add_route("GET", config.READY_PATH, self._readyz)
        self.add_route("GET", config.METRICS_PATH, self._metrics)

    async def identity(self, token: str) -> Identity:
        """Validate ``token`` (``callers.Callers.identity``) or raise a 401/503 ``HTTPError``."""
        return await self.callers.identity(token)

    async def account_annotations(self, namespace: str, name: str) -> Mapping[str, str]:
        """The live ServiceAccount's annotations (``{}`` when it does not exist; 503 ``HTTPError`` on outages)."""
        try:
            meta: kubeapi.ObjectMeta = await self.guard.call(
                "serviceaccount", self.kube.service_account_metadata, namespace, name
            )
        except kubeapi.NotFoundError:
            return {}
        return meta.annotations

    # -- health --------------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return messages.json_response(200, {"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        keys_ready, key_reasons = self.keys.status()
        api_ready, api_problem = await self.guard.status()
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
        return messages.json_response(200 if ready else 503, {"ready": ready, "checks": checks})

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.registry.render(), metrics.CONTENT_TYPE)


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
    webhook.add_routes(app, runtime, tls.ca_bundle, app.account_annotations)
    add_state_metrics(app.registry, keys, tls)
    return app


def add_state_metrics(registry: metrics.Registry, keys: keymanager.KeyManager, tls: tlsmanager.TLSManager) -> None:
    """Gauges of the key sets and the serving certificate, read at every scrape (what operators alert on)."""

    def signing_age() -> list[tuple[tuple[str, ...], float]]:
        found: list[tuple[tuple[str, ...], float]] = []
        for name, provider in keys.providers.items():
            try:
                key = provider.signing_key()
            except keyset.KeySetError:
                continue
            found.append(((name,), float(provider.now() - key.created)))
        return found

    registry.gauge(
        "kube_sts_signing_key_age_seconds",
        "Age of the key that signs now, by endpoint (absent while no key can sign)",
        ("endpoint",),
        signing_age,
    )
    registry.gauge(
        "kube_sts_signing_key_available",
        "1 when a key can sign now, 0 when tokens are refused (no_signing_key)",
        ("endpoint",),
        lambda: [((name,), float(_signs(provider))) for name, provider in keys.providers.items()],
    )
    registry.gauge(
        "kube_sts_keys_published",
        "Public keys the issuer documents (JWKS) publish, by endpoint",
        ("endpoint",),
        lambda: [((name,), float(len(provider.published()))) for name, provider in keys.providers.items()],
    )
    registry.gauge(
        "kube_sts_keys_waiting_for_publication",
        "Keys held back from signing until the issuer's public JWKS serves them (waitForPublication)",
        ("endpoint",),
        lambda: [((name,), float(len(provider.held()))) for name, provider in keys.providers.items()],
    )

    def expiry() -> list[tuple[tuple[str, ...], float]]:
        certificate = tls.serving.certificate()
        return [] if certificate is None else [((), certificate.not_valid_after_utc.timestamp())]

    registry.gauge(
        "kube_sts_tls_certificate_expiry_timestamp_seconds",
        "When the served TLS certificate expires (epoch seconds)",
        (),
        expiry,
    )
    secrets = tls.secrets
    if secrets is not None:
        registry.gauge(
            "kube_sts_webhook_watch_failures",
            "Failed watch rounds in a row on a MutatingWebhookConfiguration (0 while its watch runs)",
            ("configuration",),
            lambda: [((name,), float(count)) for name, count in sorted(secrets.watch_failures.items())],
        )
        registry.gauge(
            "kube_sts_webhook_watch_rounds",
            "Watches started on a MutatingWebhookConfiguration since the runtime started (first, renewals, retries)",
            ("configuration",),
            lambda: [((name,), float(count)) for name, count in sorted(secrets.watch_rounds.items())],
        )


def _signs(provider: keymanager.KeyProvider) -> bool:
    try:
        provider.signing_key()
    except keyset.KeySetError:
        return False
    return True


def resolve_sidecar_image(
    runtime: config.RuntimeConfig, kube: kubeapi.KubeAPI, environ: Mapping[str, str]
) -> config.RuntimeConfig:
    """``runtime`` with its sidecar image set: the configured one, else the image of the runtime's
    own container, read from its own Pod (``POD_NAME``/``POD_NAMESPACE``, downward API).

    The Pod's spec is what kustomize ``images:``, Argo CD's image overrides and ``kubectl set image``
    rewrite (through the Deployment's template), so the sidecars follow every override; an
    environment variable rendered from the same value would not (those tools rewrite only
    ``image:`` fields). It needs no permission beyond the ``get`` on pods the runtime already has.
    """
    if runtime.sidecar_image is not None:
        return runtime
    name, namespace = environ.get(config.POD_NAME_ENV), environ.get(config.POD_NAMESPACE_ENV)
    if not name or not namespace:
        raise ValueError(
            f"sidecarImage is not set and {config.POD_NAME_ENV}/{config.POD_NAMESPACE_ENV} are not in the "
            "environment, so the runtime cannot read its own image from its Pod"
        )
    image = kube.container_image(namespace, name, config.RUNTIME_CONTAINER)
    log.info("sidecar image %s (container %s of Pod %s/%s)", image, config.RUNTIME_CONTAINER, namespace, name)
    return runtime.model_copy(update={"sidecar_image": image})


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
    try:
        runtime = resolve_sidecar_image(runtime, kube, os.environ)
    except (ValueError, kubeapi.APIError) as exc:
        print(f"kube-sts-server: no sidecar image: {config.one_line(exc)}", file=sys.stderr)
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
