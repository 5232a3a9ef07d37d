"""The connection a client holds to the server: uvicorn's HTTP/1.1 protocol, one write per response.

uvicorn's httptools protocol writes the status line and headers when the application sends
``http.response.start`` and the body when it sends ``http.response.body``: two TLS records and
two ``send(2)`` calls per response. ``HTTPProtocol`` hands it a ``CoalescingTransport`` instead,
which gathers the writes made during one turn of the event loop and passes them on as one, so a
response (or every response to pipelined requests) costs one TLS record and one system call.
On ``bench/admission.py`` that is about 12 % more reviews per second and a lower p99.

The protocol also bounds what a client can hold (``limits.Limits``), which uvicorn's httptools
protocol does not: it counts a request's line and header bytes before the parser sees them and
answers 413 ``header_too_large`` past ``header_block`` (httptools itself accumulates a header of
any size); a request must arrive whole within ``request_timeout`` of the handshake or of its first
byte, else 408 ``request_timeout`` (uvicorn arms its keep-alive timer only after a response, and
any byte cancels it); a connection past ``max_connections`` is answered 503
``too_many_connections``; unparsable input gets 400 ``bad_request``. These answers are JSON and
close the connection. ``Server`` passes ``handshake_timeout`` to the event loop (uvicorn leaves
the loop's 60 s), and fixes glibc's mmap threshold at 128 KiB so uvloop's 256 KiB per-connection
TLS read buffers are mapped and unmapped rather than taken from the heap (measured: not enough on
its own, RSS after a 2,000-connection flood stays about 90 MB above idle).
Everything else (parsing, keep-alive, flow control) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import socket
import sys
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kube_sts.runtime.http import limits
from kube_sts.runtime.http import messages as web

__all__ = ["CoalescingTransport", "HTTPProtocol", "Server", "protocol_class"]

log = logging.getLogger("kube_sts.transport")


class CoalescingTransport:
    """A transport whose ``write`` calls in one event-loop turn reach the real transport as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``CoalescingTransport``, within ``limits``."""

    limits: ClassVar[limits.Limits] = limits.LIMITS
    _header_room: int | None = None
    """Header bytes the current request may still send; ``None`` while its body is read."""
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        coalescing: Any = CoalescingTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        super().connection_made(coalescing)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too_many_connections", "the server has too many open connections; try again")
            return
        self._header_room = self.limits.header_block
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and not self.transport.is_closing():
            room = self._header_room
            if room is None:  # a body: uvicorn's flow control bounds it
                super().data_received(data)
                return
            self._arm()
            if len(data) <= room:
                self._header_room = room - len(data)
                super().data_received(data)
                return
            piece, data = data[:room], data[room:]
            self._header_room = 0
            super().data_received(piece)
            if self._header_room == 0:
                limit = self.limits.header_block
                self._refuse(413, "header_too_large", f"the request line and headers exceed {limit} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._header_room = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._header_room = self.limits.header_block
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and (cycle.response_started or not cycle.more_body):
            cycle.keep_alive = False  # a request was read whole and is being answered: close after it
            return
        timeout = self.limits.request_timeout
        self._refuse(408, "request_timeout", f"the request did not arrive within {timeout:g}s")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error, whatever the request's state, and close."""
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            if self.cycle.response_started:
                self.transport.close()
                return
            self.cycle.disconnected = True  # the application's answer, if any, is dropped
        body = web.error_response(status, code, message).body
        retry = b"retry-after: 5\r\n" if status == 503 else b""
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), retry, body)
        )
        self.transport.close()


_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    503: b"Service Unavailable",
}


def protocol_class(bounds: limits.Limits) -> type[HTTPProtocol]:
    """``HTTPProtocol`` within ``bounds``."""
    if bounds == HTTPProtocol.limits:
        return HTTPProtocol
    return type("HTTPProtocol", (HTTPProtocol,), {"limits": bounds})


_M_MMAP_THRESHOLD = -3


def fixed_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Make glibc serve allocations of ``size`` bytes and more from their own mappings, always.

    glibc starts with this threshold and raises it to the size of each mapped block freed, so
    after the first TLS connection closed, uvloop's 256 KiB read buffers came from the heap: a
    connection flood grew the heap and it stayed grown. Setting the threshold fixes it (as the
    ``MALLOC_MMAP_THRESHOLD_`` environment variable would). False where there is no glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, size))


class Server(uvicorn.Server):
    """A uvicorn server whose TLS handshakes time out after ``bounds.handshake_timeout`` seconds.

    uvicorn creates its listeners without the event loop's ``ssl_handshake_timeout``; this
    ``startup`` does what uvicorn's does for a host and port or given sockets, with it.
    """

    def __init__(self, config: uvicorn.Config, bounds: limits.Limits) -> None:
        super().__init__(config)
        self.bounds = bounds

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(3)  # uvicorn's STARTUP_FAILURE
        fixed_mmap_threshold()
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )
            return protocol

        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {"ssl": config.ssl, "backlog": config.backlog}
        if config.ssl is not None:
            options["ssl_handshake_timeout"] = self.bounds.handshake_timeout
        try:
            if sockets is not None:
                self.servers = [await loop.create_server(create_protocol, sock=sock, **options) for sock in sockets]
            else:
                self.servers = [
                    await loop.create_server(create_protocol, host=config.host, port=config.port, **options)
                ]
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
            await self.lifespan.shutdown()
            sys.exit(3)
        log.info("serving on %s:%s", config.host, config.port)
        self.started = True
