"""What one client may cost the token service: header sizes, timeouts, open connections.

The same figures bound a request twice. The connection (``transport.HTTPProtocol``) counts the
raw bytes of a request's line and headers before the HTTP parser sees them and answers 413
``header_too_large`` once they pass ``HEADER_BLOCK``, so no header block larger than that is
ever parsed or held; the application (``request_headers``) checks the parsed headers' total size
against ``MAX_HEADERS`` before it decodes or merges any of them, and merges repeated headers in
linear time. ``Limits`` gathers what the server is started with (see ``server.uvicorn_server``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from kube_sts.runtime.http import messages as web

__all__ = ["HEADER_BLOCK", "LIMITS", "MAX_HEADERS", "Limits", "request_headers"]

MAX_HEADERS = 32 * 1024
"""Header names and values of one request, in bytes (what the application accepts)."""
HEADER_BLOCK = MAX_HEADERS + 16 * 1024
"""Request line, headers and framing of one request, in bytes (what the connection reads)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    header_block: int = HEADER_BLOCK
    """Bytes of a request line and headers the connection reads before answering 413."""
    request_timeout: float = 10.0
    """Seconds from a connection's handshake, or a request's first byte, to the end of its body."""
    handshake_timeout: float = 10.0
    """Seconds a TLS handshake may take."""
    shutdown_timeout: float = 5.0
    """Seconds a closed TLS connection waits for the client's close_notify (the event loop's
    default is 30: a client that stops reading kept each connection it was refused that long)."""
    max_connections: int = 1024
    """Open (handshaken) connections; one more closes the least recently active one not being
    answered (``transport.Connections``), or is answered 503 ``too_many_connections`` if all are."""
    keep_alive: int = 75
    """Seconds an idle keep-alive connection stays open between requests."""


LIMITS = Limits()


def request_headers(raw: Iterable[tuple[bytes, bytes]], limit: int = MAX_HEADERS) -> dict[str, str]:
    """ASGI headers as a dict of lower-case names, repeats joined with ``,``; 413 past ``limit`` bytes.

    The size is checked first (a header has at least one byte of name, so more headers than
    ``limit`` fail at once), and repeated values are gathered and joined once each.
    """
    pairs = raw if isinstance(raw, list | tuple) else list(raw)
    if len(pairs) > limit or sum(len(name) + len(value) for name, value in pairs) > limit:
        raise web.HTTPError(413, "header_too_large", f"request headers exceed {limit} bytes")
    headers: dict[str, str] = {}
    repeated: dict[str, list[str]] | None = None
    for raw_name, raw_value in pairs:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name not in headers:
            headers[name] = value
            continue
        if repeated is None:
            repeated = {}
        values = repeated.get(name)
        if values is None:
            repeated[name] = [headers[name], value]
        else:
            values.append(value)
    if repeated is not None:
        for name, values in repeated.items():
            headers[name] = ",".join(values)
    return headers
