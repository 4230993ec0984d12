"""The periodic sweep: a daemon thread that calls ``store.sweep()`` every interval."""

from __future__ import annotations

import logging
import threading

from bgsvc.storage.base import ResultStore

log = logging.getLogger(__name__)


def default_sweep_interval(ttl_s: float) -> float:
    """A tenth of the TTL, between 1 s and 10 min: an object outlives its TTL by at most
    that, and a directory of many results is not walked needlessly often."""
    return min(600.0, max(1.0, ttl_s / 10))


class Sweeper:
    """Sweeps once at start (leftovers of a previous run) and then every ``interval_s``.
    Several processes sweeping the same directory is harmless (deletes are idempotent)."""

    def __init__(self, store: ResultStore, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="bgsvc-storage-sweep", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait for it (a sweep in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.store.sweep()
            except Exception:
                # A failed sweep (disk error) must not end the thread: the next may work.
                log.exception("storage sweep of %s failed", self.store.describe())
            if self._stop.wait(self.interval_s):
                return
