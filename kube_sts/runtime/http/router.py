"""The ASGI application shell: routes, request bounds, lifespan hooks and request metrics.

A route is ``method path -> async (messages.Request) -> messages.Response`` (``add_route``); a
part of the runtime registers its own routes (the token service, the admission webhook, the
health routes). Bodies over a route's ``max_body`` get 413, header blocks are bounded by
``limits.request_headers``, ``HTTPError`` becomes its JSON answer and anything else a logged 500.
``on_startup`` and ``on_shutdown`` take plain callables, run in order (on a thread) when uvicorn
starts and stops the application.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from kube_sts.runtime.http import limits, messages, metrics

__all__ = ["MAX_BODY", "Router"]

log = logging.getLogger("kube_sts.server")

MAX_BODY = 64 * 1024
MAX_HEADERS = limits.MAX_HEADERS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Route:
    handler: messages.Handler
    max_body: int
    name: str


class Router:
    """An ASGI application of routes; request counts and latencies go to ``registry``."""

    def __init__(self, registry: metrics.Registry) -> None:
        self.registry = registry
        self.routes: dict[str, dict[str, _Route]] = {}
        self.on_startup: list[Callable[[], object]] = []
        self.on_shutdown: list[Callable[[], object]] = []
        self._m_requests = registry.counter(
            "kube_sts_http_requests_total", "HTTP requests by route and status code.", ("route", "code")
        )
        self._m_duration = registry.histogram(
            "kube_sts_http_request_duration_seconds", "Time to answer an HTTP request.", ("route",)
        )

    def add_route(self, method: str, path: str, handler: messages.Handler, *, max_body: int = MAX_BODY) -> None:
        """Serve ``method path`` with ``handler``; bodies over ``max_body`` bytes get 413."""
        methods = self.routes.setdefault(path, {})
        if method in methods:
            raise ValueError(f"{method} {path} is already routed")
        methods[method] = _Route(handler, max_body, path)

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

    async def _respond(self, scope: Scope, receive: Receive) -> tuple[str, messages.Response]:
        path: str = scope["path"]
        methods = self.routes.get(path)
        if methods is None:
            await _drain(receive)
            return "unknown", messages.error_response(404, "not_found", f"no route for {path}")
        route = methods.get(scope["method"])
        if route is None:
            await _drain(receive)
            allow = ", ".join(sorted(methods))
            return path, messages.error_response(
                405, "method_not_allowed", f"{path} answers {allow}", (("allow", allow),)
            )  # fmt: skip
        try:
            headers = limits.request_headers(scope["headers"], MAX_HEADERS)
            body = await _read_body(receive, headers.get("content-length"), route.max_body)
            client = scope.get("client") or ("", 0)
            request = messages.Request(scope["method"], path, headers, body, str(client[0]))
            return path, await route.handler(request)
        except messages.HTTPError as exc:
            return path, messages.error_response(exc.status, exc.code, exc.message, exc.headers)
        except Exception:
            return path, self._internal_error(scope)

    def _internal_error(self, scope: Scope) -> messages.Response:
        log.exception("%s %s failed", scope.get("method"), scope.get("path"))
        return messages.error_response(500, "internal_error", "internal error; see the server log")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.on_startup:
                        await asyncio.to_thread(hook)
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
                await send({"type": "lifespan.shutdown.complete"})
                return


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
            raise messages.HTTPError(400, "bad_request", "Content-Length is not a number") from None
        if declared > limit:
            raise messages.HTTPError(413, "body_too_large", f"the request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise messages.HTTPError(400, "bad_request", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise messages.HTTPError(413, "body_too_large", f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
