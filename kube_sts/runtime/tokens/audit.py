"""The audit trail: one JSON line per token decision (tokens and keys are never written)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

__all__ = ["AuditTrail"]


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
