"""Admission control and bounded inference: shed load with 429 instead of queueing forever."""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from typing import Any, Protocol, TypeVar

from bgsvc.errors import NotReady, Overloaded
from bgsvc.inference.watchdog import Watchdog
from bgsvc.log import request_id_var

T = TypeVar("T")


class SchedulerObserver(Protocol):
    """Where the scheduler reports its gauges (metrics.Metrics implements it)."""

    def set_queue(self, queued: int, running: int) -> None: ...


def _notify(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    # An inference abandoned at shutdown (a stuck one) may end after its loop closed.
    with suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


class _NullObserver:
    def set_queue(self, queued: int, running: int) -> None:
        return None


class Ticket:
    """A place in the process: held from admission until the response is done *and* any
    inference it started has really finished (a timed-out request's thread keeps running,
    and must keep counting against the bound)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._pending = 0
        self._closed = False
        self._released = False
        self._aside = 0
        self.queue_seconds = 0.0

    def close(self) -> None:
        """The response is finished; release once no inference is still running for it."""
        self._closed = True
        self._maybe_release()

    @contextmanager
    def aside(self) -> Iterator[None]:
        """The ticket's place given back for the block, and taken again after it. For an
        input still being fetched (a URL): a place is for inputs in hand, and a slow origin
        must not hold one that other requests and the job runner wait for. Overloaded (429)
        after the block if the process filled up meanwhile. Blocks may overlap (an image
        and its backdrop fetched side by side): the place goes with the first and comes
        back with the last."""
        if self._aside == 0 and not self._released:
            self._scheduler._release()
        self._aside += 1
        done = False
        try:
            yield
            done = True
        finally:
            self._aside -= 1
            back = self._aside > 0 or (not self._released and self._scheduler._retake())
            if not back:
                self._released = True  # nothing for close() to give back
        if not back and done and not self._closed:
            raise Overloaded(
                "The service filled up while the image was fetched; retry later.",
                retry_after=self._scheduler.retry_after(),
            )

    def _inference_done(self) -> None:
        self._pending -= 1
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self._closed and self._pending == 0 and not self._released:
            self._released = True
            if self._aside == 0:  # else its place is already given back
                self._scheduler._release()


class Places:
    """At most ``size`` holders at once, and at most half of them (at least one) for one
    owner (an API key): the next one is refused at once (429), never queued. Bounds work
    before admission (uploads being received, URLs being fetched, batch intakes) that a
    ticket cannot: a ticket is for inputs already in hand. The owner's share keeps one key
    that sends slowly on purpose from taking every place from the others. Event loop only."""

    def __init__(self, size: int, what: str, retry_after: int = 1) -> None:
        self.size = size
        self.what = what
        self.retry_after = retry_after
        self.per_owner = max(1, size // 2)
        self._held = 0
        self._owners: dict[str, int] = {}

    @property
    def held(self) -> int:
        """Places taken now."""
        return self._held

    def check(self, owner: str | None = None) -> None:
        """Overloaded (429) when every place is taken, or ``owner``'s share; nothing is
        taken."""
        if self._held >= self.size:
            raise Overloaded(
                f"Too many {self.what} at once; retry later.", retry_after=self.retry_after
            )
        if owner is not None and self._owners.get(owner, 0) >= self.per_owner:
            raise Overloaded(
                f"Too many {self.what} at once for this API key (at most {self.per_owner}); "
                "retry later.",
                retry_after=self.retry_after,
            )

    @contextmanager
    def hold(self, owner: str | None = None) -> Iterator[None]:
        """One place for the block (counted against ``owner``'s share when given), or
        Overloaded straight away."""
        self.check(owner)
        self._held += 1
        if owner is not None:
            self._owners[owner] = self._owners.get(owner, 0) + 1
        try:
            yield
        finally:
            self._held -= 1
            if owner is not None:
                self._owners[owner] -= 1
                if not self._owners[owner]:
                    del self._owners[owner]


class Scheduler:
    """At most ``max_concurrency`` inferences at once and ``max_queue`` admitted requests
    waiting; an arrival beyond that is refused at once with a Retry-After estimate."""

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        observer: SchedulerObserver | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.capacity = max_concurrency + max_queue
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="bgsvc-infer")
        self._observer = observer or _NullObserver()
        self._watchdog = watchdog
        # Submitted, not yet finished; on a stuck inference the queued ones are refused.
        self._pending: set[Future[Any]] = set()
        self._refused: set[Future[Any]] = set()
        self._admitted = 0
        self._running = 0
        self._lock = threading.Lock()
        # Mean inference time (EWMA), for Retry-After; seeded by the first inferences.
        self._mean_seconds = 1.0

    @property
    def admitted(self) -> int:
        """Requests currently holding a ticket."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds until a place is likely to free up, at least 1."""
        waiting = max(0, self._admitted - self.max_concurrency) + 1
        return max(1, math.ceil(waiting * self._mean_seconds / self.max_concurrency))

    def check_room(self) -> None:
        """Overloaded (429) when no place is free now; nothing is taken."""
        if self._admitted >= self.capacity:
            raise Overloaded(
                "The service is at capacity; retry later.", retry_after=self.retry_after()
            )

    def try_admit(self) -> Ticket:
        """A ticket, or Overloaded (429) straight away when the process is full."""
        self.check_room()
        self._admitted += 1
        self._publish()
        return Ticket(self)

    def _release(self) -> None:
        self._admitted -= 1
        self._publish()

    def _retake(self) -> bool:
        """A place for a ticket that set its own aside, if one is free now."""
        if self._admitted >= self.capacity:
            return False
        self._admitted += 1
        self._publish()
        return True

    def _publish(self) -> None:
        with self._lock:
            running = self._running
        self._observer.set_queue(max(0, self._admitted - running), running)

    async def run(self, ticket: Ticket, fn: Callable[..., T], *args: object, model: str = "-") -> T:
        """Run ``fn(*args)`` on the inference pool; the ticket stays held until it ends."""
        loop = asyncio.get_running_loop()
        enqueued = time.perf_counter()
        request_id = request_id_var.get()
        watchdog = self._watchdog
        if watchdog is not None and watchdog.tripped is not None:
            raise NotReady("Not ready: stuck inference.", retry_after=5)

        def job() -> T:
            started = time.perf_counter()
            ticket.queue_seconds = started - enqueued
            with self._lock:
                self._running += 1
            _notify(loop, self._publish)
            try:
                with watchdog.watching(request_id, model) if watchdog else nullcontext():
                    return fn(*args)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self._running -= 1
                    self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * elapsed
                _notify(loop, self._publish)

        ticket._pending += 1
        # The pool's thread runs in this request's context (request id, current span).
        future: Future[T] = self._executor.submit(contextvars.copy_context().run, job)
        future.add_done_callback(lambda _: _notify(loop, ticket._inference_done))
        self._pending.add(future)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future in self._refused:
                raise NotReady("Not ready: stuck inference.", retry_after=5) from None
            raise
        finally:
            self._pending.discard(future)
            self._refused.discard(future)

    def refuse_queued(self) -> int:
        """A slot is stuck: answer 503 (which the balancer retries elsewhere) to every
        request still waiting for the pool, instead of a 504 after its whole budget.
        Called on the event loop; returns how many were refused."""
        refused = [f for f in list(self._pending) if f.cancel()]
        self._refused.update(refused)
        return len(refused)

    def shutdown(self) -> None:
        """Stop the pool after the running inferences finish, except a stuck one, which
        never will (the process then exits without joining it)."""
        stuck = self._watchdog is not None and self._watchdog.tripped is not None
        self._executor.shutdown(wait=not stuck, cancel_futures=True)
