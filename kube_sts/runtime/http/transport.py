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
any byte cancels it); unparsable input gets 400 ``bad_request``.

Past ``max_connections`` the server makes room rather than refusing: the connection least
recently active that is not being answered (idle between requests, or still sending a request) is
closed, with 503 ``too_many_connections`` if it had sent part of a request. Connections that hold
a slot without finishing a request are the oldest, so a flood of them cannot keep a new client (the
kubelet's ``/healthz`` probe, a workload's exchange) out; only when every slot is answering a
request is the new connection answered 503. These answers are JSON and close the connection.

``Server`` passes ``handshake_timeout`` to the event loop (uvicorn leaves the loop's 60 s), so a
connection that sends nothing, or stops inside its handshake, is closed after it. It also returns
memory that a burst of connections freed (``MemoryReturn``): glibc gives the kernel back only the
free memory at the top of its heap, so after a flood the freed per-connection TLS state between
live blocks stayed resident, and the next flood grew the heap again (measured: RSS 70 MB idle,
then 122, 148, 175 MB after three rounds of 2,000 stalled connections; 82, 83, 83 MB with it).
Python's own allocator keeps the pools of its peak (about 12 MB after 2,000 connections, reused
by the next flood, never more).
Everything else (parsing, keep-alive, flow control) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import socket
import sys
import time
import weakref
from typing import Any, ClassVar, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kube_sts.runtime.http import limits
from kube_sts.runtime.http import messages as web

__all__ = ["CoalescingTransport", "Connections", "HTTPProtocol", "MemoryReturn", "Server", "protocol_class"]

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


class Connections:
    """One server's open connections, least recently active first (a request's start is activity)."""

    _servers: ClassVar[weakref.WeakKeyDictionary[object, Connections]] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._order: dict[HTTPProtocol, None] = {}

    @classmethod
    def of(cls, server_state: object) -> Connections:
        """The connections of the server whose uvicorn ``ServerState`` is ``server_state``."""
        connections = cls._servers.get(server_state)
        if connections is None:
            connections = cls._servers[server_state] = cls()
        return connections

    def __len__(self) -> int:
        return len(self._order)

    def touch(self, protocol: HTTPProtocol) -> None:
        self._order.pop(protocol, None)
        self._order[protocol] = None

    def discard(self, protocol: HTTPProtocol) -> None:
        self._order.pop(protocol, None)

    def evictable(self) -> HTTPProtocol | None:
        """The least recently active connection that is not answering a request, if any."""
        for protocol in self._order:
            if not protocol.answering():
                return protocol
        return None


class HTTPProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``CoalescingTransport``, within ``limits``."""

    limits: ClassVar[limits.Limits] = limits.LIMITS
    _header_room: int | None = None
    """Header bytes the current request may still send; ``None`` while its body is read."""
    _deadline: asyncio.TimerHandle | None = None
    _open: Connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        coalescing: Any = CoalescingTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        super().connection_made(coalescing)
        self._header_room = self.limits.header_block
        self._open = Connections.of(self.server_state)
        if len(self._open) >= self.limits.max_connections:
            victim = self._open.evictable()
            if victim is None:
                self._refuse(503, "too_many_connections", "the server has too many open connections; try again")
                return
            victim.evict()
        self._open.touch(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._open.discard(self)
        super().connection_lost(exc)

    def answering(self) -> bool:
        """Whether a request was read whole and is being answered (the connection is not evictable)."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and (cycle.response_started or not cycle.more_body)

    def evict(self) -> None:
        """Close to make room for a new connection: silently when idle between requests, else 503."""
        self._open.discard(self)
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and self._header_room == self.limits.header_block:
            self._disarm()
            self.transport.close()
            return
        self._refuse(503, "too_many_connections", "the server has too many open connections; try again")

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
        self._open.touch(self)
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
        if self.answering():
            assert self.cycle is not None
            self.cycle.keep_alive = False  # a request was read whole and is being answered: close after it
            return
        timeout = self.limits.request_timeout
        self._refuse(408, "request_timeout", f"the request did not arrive within {timeout:g}s")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with a JSON error, whatever the request's state, and close."""
        self._disarm()
        self._open.discard(self)
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


class MemoryReturn:
    """Every ``interval`` seconds, hand freed heap pages back to the kernel if they hold memory.

    glibc returns only the free memory at the top of its heap (``M_TRIM_THRESHOLD``); what a flood
    of connections freed below a block still in use stays resident, and ``malloc_trim(0)``
    releases it (``madvise(MADV_DONTNEED)`` on every free page of every arena). How much of the
    free memory is resident cannot be read cheaply, so the trim runs, at most once per
    ``interval`` and on the event loop, when the heap's free bytes (``mallinfo2``) rose by
    ``threshold`` above their lowest level since the last trim (a flood closed), or when the heap
    has ``threshold`` bytes free and the resident size grew by as much since the last trim (a
    flood reused trimmed pages and freed them again between two checks). Does nothing without
    glibc 2.33 (``available`` is False).
    """

    def __init__(self, interval: float = 5.0, threshold: int = 8 * 1024 * 1024) -> None:
        self.interval, self.threshold = interval, threshold
        self.trims = 0
        self._timer: asyncio.TimerHandle | None = None
        self._libc: Any = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c"))
                libc.mallinfo2.restype = _MallInfo2
                libc.malloc_trim.argtypes = (ctypes.c_size_t,)
                self._libc = libc
            except (OSError, AttributeError, TypeError):
                self._libc = None
        self._page = os.sysconf("SC_PAGE_SIZE") if self._libc is not None else 0
        self._settled = self._resident()
        """The lowest resident size since the last trim (or the start)."""
        self._lowest = self._free()
        """The lowest free heap size since the last trim (or the start)."""

    @property
    def available(self) -> bool:
        return self._libc is not None

    def _free(self) -> int:
        return int(self._libc.mallinfo2().fordblks) if self._libc is not None else 0

    def _resident(self) -> int:
        if self._libc is None:
            return 0
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * self._page

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.available:
            self._timer = loop.call_later(self.interval, self._check, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def check(self) -> bool:
        """Trim if the heap freed ``threshold`` bytes, or holds as many and the process grew as much."""
        resident, free = self._resident(), self._free()
        self._settled, self._lowest = min(self._settled, resident), min(self._lowest, free)
        freed = free - self._lowest >= self.threshold
        regrown = free >= self.threshold and resident - self._settled >= self.threshold
        if not (freed or regrown):
            return False
        started = time.perf_counter()
        self._libc.malloc_trim(0)
        self.trims += 1
        self._settled, self._lowest = self._resident(), self._free()
        log.debug(
            "returned %d MiB of freed heap memory (%d MiB free) in %.1f ms",
            (resident - self._settled) >> 20,
            free >> 20,
            (time.perf_counter() - started) * 1e3,
        )
        return True

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self.check()
        self.start(loop)


class Server(uvicorn.Server):
    """A uvicorn server whose TLS handshakes time out after ``bounds.handshake_timeout`` seconds,
    and whose closing TLS connections wait ``bounds.shutdown_timeout`` for the peer's close_notify.

    uvicorn creates its listeners without the event loop's ``ssl_handshake_timeout``; this
    ``startup`` does what uvicorn's does for a host and port or given sockets, with it.
    """

    def __init__(self, config: uvicorn.Config, bounds: limits.Limits) -> None:
        super().__init__(config)
        self.bounds = bounds
        self.memory = MemoryReturn()

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
            options["ssl_shutdown_timeout"] = self.bounds.shutdown_timeout
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
        self.memory.start(loop)
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.memory.stop()
        await super().shutdown(sockets)
