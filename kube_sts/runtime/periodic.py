"""One background thread that runs a round now and then every ``interval`` seconds until stopped.

The key manager and the TLS manager each run their rounds on one. A round is expected to handle
the failures it knows (an unreachable API server, a bad file) itself and keep the runtime going
on what it has; anything else it raises is logged with its traceback here and the next round
runs as planned, because a background thread that dies silently would leave keys unrotated and
certificates unrenewed with nothing to show for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Periodic"]

log = logging.getLogger("kube_sts.periodic")


class Periodic:
    """``round`` once on ``start()`` (in the caller, so a failure there is the caller's), then on a thread."""

    def __init__(self, name: str, round: Callable[[], None], interval: float) -> None:
        self.name = name
        self.round = round
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.round()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.round()
            except Exception:  # the one catch-all of the background rounds: logged, then the next round
                log.exception("%s: round failed", self.name)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
