"""The guard in front of the Kubernetes API: a thread pool, a timeout, outage state and the 503s.

Blocking client calls run on the guard's pool with a timeout. When the API server cannot be
reached in time the caller gets ``503 apiserver_unavailable`` with ``Retry-After`` and the guard
records the outage (logged once per outage, not once per request); a refusal other than 404 is
``503 apiserver_error``. ``status`` is the readiness check: the API server answered recently, or
a fresh probe (``version``) says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kube_sts.runtime.http import messages, metrics
from kube_sts.runtime.kube import api

__all__ = ["PROBE_INTERVAL", "RETRY_AFTER", "Guard"]

log = logging.getLogger("kube_sts.server")

T = TypeVar("T")
RETRY_AFTER = "5"
PROBE_INTERVAL = 30.0
"""Seconds after which readiness asks the API server again rather than trusting the last answer."""
PROBE_TIMEOUT = 2.0


class Guard:
    """Calls to ``kube`` on a pool of ``threads`` within ``timeout`` seconds each."""

    def __init__(
        self, kube: api.KubeAPI, registry: metrics.Registry, *, timeout: float = 3.0, threads: int = 8
    ) -> None:
        self.kube = kube
        self.timeout = timeout
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="kube-sts-api")
        self._answered_at: float | None = None
        self._problem = "the API server has not been contacted yet"
        self._lock = threading.Lock()
        self._m_calls = registry.counter(
            "kube_sts_apiserver_requests_total", "Kubernetes API calls by call and outcome.", ("call", "outcome")
        )
        self._m_duration = registry.histogram(
            "kube_sts_apiserver_request_duration_seconds", "Kubernetes API call latency.", ("call",)
        )

    # -- outage state ----------------------------------------------------------------------------

    def answered(self) -> None:
        with self._lock:
            self._answered_at = time.monotonic()
            self._problem = ""

    def unreachable(self, problem: str) -> bool:
        """Record an outage; True when the API server had answered until now."""
        with self._lock:
            was_up = self._answered_at is not None
            self._answered_at = None
            self._problem = problem
        return was_up

    def forget(self) -> None:
        """Drop the last answer, so the next readiness check probes the API server."""
        with self._lock:
            self._answered_at = None

    def probe(self) -> None:
        try:
            self.kube.version()
        except api.UnavailableError as exc:
            self.unreachable(str(exc))
        except api.APIError:
            self.answered()
        else:
            self.answered()

    def start_probe(self) -> None:
        self.executor.submit(self.probe)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def status(self) -> tuple[bool, str]:
        """Readiness: (answered recently, what is wrong otherwise); probes when the answer is old."""
        with self._lock:
            answered_at = self._answered_at
        if answered_at is None or time.monotonic() - answered_at > PROBE_INTERVAL:
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(self.executor, self.probe), PROBE_TIMEOUT
                )
            except TimeoutError:
                self.unreachable(f"the API server did not answer within {PROBE_TIMEOUT:g}s")
        with self._lock:
            return self._answered_at is not None, self._problem

    # -- calls -------------------------------------------------------------------------------------

    async def call(self, call: str, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking client call on the pool; 503 when the API server cannot answer in time."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self.executor, function, *args), self.timeout)
        except (TimeoutError, api.UnavailableError) as exc:
            outcome = "unavailable"
            problem = f"{call}: {exc}" if str(exc) else f"{call}: no answer within {self.timeout}s"
            if self.unreachable(problem):  # one line per outage, not one per request
                log.warning("Kubernetes API unavailable: %s", problem)
            raise messages.HTTPError(
                503,
                "apiserver_unavailable",
                "the Kubernetes API server cannot be reached; try again",
                (("retry-after", RETRY_AFTER),),
            ) from None
        except api.NotFoundError:
            outcome = "not_found"
            self.answered()
            raise
        except api.APIError as exc:
            outcome = "error"
            self.answered()
            log.error("Kubernetes API refused %s: %s", call, exc)
            raise messages.HTTPError(
                503,
                "apiserver_error",
                f"the Kubernetes API server refused the {call}; see the server log",
                (("retry-after", RETRY_AFTER),),
            ) from None
        finally:
            self._m_calls.inc(call, outcome)
            self._m_duration.observe(time.perf_counter() - started, call)
        self.answered()
        return result
