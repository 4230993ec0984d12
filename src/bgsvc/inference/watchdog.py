"""Stuck-inference watchdog: a forward pass that never returns must not keep a worker
half-alive behind the balancer.

The scheduler reports each inference while it runs (:meth:`Watchdog.watching`); a cheap
asyncio task (:meth:`Watchdog.run`) looks at the oldest one periodically. When it is
older than the limit the watchdog trips, once per process: it logs one ERROR line and
calls ``on_trip`` (the app marks itself not ready and sends itself SIGTERM, so the usual
drain finishes everything that can finish). The stuck thread itself never ends, and both
``ThreadPoolExecutor.shutdown(wait=True)`` and Python's exit join it, so once the graceful
part is over :meth:`Watchdog.finish` ends the process with :data:`STUCK_EXIT_STATUS`; a
backstop timer does the same if the graceful part itself never ends. The supervisor
(gunicorn's arbiter, Kubernetes, Compose, ``bgsvc cluster``) then starts a fresh one.

An asyncio task rather than a thread: ONNX Runtime releases the GIL, so the event loop
stays free while a forward pass hangs, and the reaction (readiness, metrics, signals)
then runs on the loop like every other state change. A stuck *event loop* is gunicorn's
heartbeat's job (``timeout`` in deploy/gunicorn.conf.py), not this one's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

log = logging.getLogger(__name__)

# EX_TEMPFAIL: "try again later", which a fresh process is. Not gunicorn's 3 or 4, which
# would halt the whole arbiter instead of replacing one worker.
STUCK_EXIT_STATUS = 75


def hard_exit(status: int) -> None:
    """Flush the logs and leave now, without joining threads (the stuck one never ends)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


@dataclass(frozen=True)
class Inference:
    """One running forward pass."""

    request_id: str
    model: str
    started: float  # time.monotonic()


class Watchdog:
    """Knows when each running inference started and trips once one runs too long."""

    def __init__(
        self,
        limit_s: float,
        grace_s: float,
        exit_process: Callable[[int], None] = hard_exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_s = limit_s
        self.grace_s = grace_s
        self._exit_process = exit_process
        self._clock = clock
        self._running: dict[int, Inference] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._exited = False
        self._backstop: threading.Timer | None = None
        self.tripped: Inference | None = None

    @property
    def interval_s(self) -> float:
        """How often to look: a tenth of the limit, between 50 ms and 1 s."""
        return min(1.0, max(0.05, self.limit_s / 10))

    @contextmanager
    def watching(self, request_id: str, model: str) -> Iterator[None]:
        """Around one forward pass, in the thread that runs it."""
        key = next(self._keys)
        with self._lock:
            self._running[key] = Inference(request_id, model, self._clock())
        try:
            yield
        finally:
            with self._lock:
                del self._running[key]

    def check(self) -> Inference | None:
        """The inference that trips the watchdog now, if any (at most once per process)."""
        if self.tripped is not None:
            return None
        with self._lock:
            oldest = min(self._running.values(), key=lambda i: i.started, default=None)
        if oldest is None:
            return None
        seconds = self._clock() - oldest.started
        if seconds < self.limit_s:
            return None
        self.tripped = oldest
        log.error(
            "stuck inference: request %s on model %s has run %.1f s (limit %.1f s); "
            "not ready, draining, then exiting with status %d to be replaced",
            oldest.request_id,
            oldest.model,
            seconds,
            self.limit_s,
            STUCK_EXIT_STATUS,
        )
        return oldest

    async def run(self, on_trip: Callable[[], None]) -> None:
        """Look every :attr:`interval_s` until the watchdog trips; then call ``on_trip``
        and arm the backstop."""
        while True:
            await asyncio.sleep(self.interval_s)
            if self.check() is not None:
                break
        self._backstop = threading.Timer(self.grace_s, self.finish)
        self._backstop.daemon = True
        self._backstop.start()
        on_trip()

    def finish(self) -> None:
        """End of the graceful part (lifespan shutdown, or the backstop): exit once if
        tripped; nothing otherwise."""
        if self.tripped is None:
            return
        with self._lock:
            if self._exited:
                return
            self._exited = True
        if self._backstop is not None:
            self._backstop.cancel()
        self._exit_process(STUCK_EXIT_STATUS)
