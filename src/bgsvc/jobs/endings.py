"""How a job's attempt ends: requeued for another attempt or recorded as final in the job
store (each write retried while the store is unavailable), its credits settled, its upload
and its segments' parts removed, its webhook and its batch's completion sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio.to_thread

from bgsvc.errors import BgsvcError, JobAttemptsExhausted, JobsUnavailable, JobTimedOut
from bgsvc.jobs import segments as cut_video
from bgsvc.jobs.base import JobStore
from bgsvc.jobs.model import JobError, JobRecord, JobStatus
from bgsvc.jobs.notify import Notifier
from bgsvc.jobs.queue import Backends, JobQueue
from bgsvc.metrics import Metrics

# Called when a batch item became final (bgsvc.batches.service.item_finished: the batch may
# be complete): (job store, the item's record, now, notifier).
ItemFinished = Callable[[JobStore, JobRecord, float, Notifier | None], Coroutine[Any, Any, None]]

T = TypeVar("T")


def job_error(exc: BaseException) -> JobError:
    """What a job's record says of ``exc``: a domain error's code and message, else
    internal_error with the exception's type."""
    if isinstance(exc, BgsvcError):
        return JobError(exc.code, exc.message)
    return JobError("internal_error", f"{type(exc).__name__}: {exc}")


class AttemptEnds:
    """Ends the attempts of one runner (``owner``); the webhooks and batch completions it
    sends run as tasks in ``webhooks``, which the runner waits for when it stops."""

    def __init__(
        self,
        queue: JobQueue,
        metrics: Metrics,
        owner: str,
        *,
        max_attempts: int,
        timeout_s: float,
        keep_originals: bool,
        notifier: Notifier | None,
        item_finished: ItemFinished | None,
        clock: Callable[[], float],
        webhooks: set[asyncio.Task[None]],
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.owner = owner
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.keep_originals = keep_originals
        self.notifier = notifier
        self.item_finished = item_finished
        self.clock = clock
        self.webhooks = webhooks

    async def retry_or_fail(
        self, backends: Backends, record: JobRecord, started: float, exc: Exception
    ) -> None:
        """Queued for another attempt while it has attempts left; else failed (with the
        time limit's error, or as attempts exhausted with the last one's)."""
        error = job_error(exc)
        if record.attempts < self.max_attempts:
            requeue = backends.jobs.requeue
            if await self.settle(lambda: requeue(record.id, self.owner, error)):
                self.metrics.jobs.labels("retried").inc()
                self.queue.wake.set()
            return
        if not isinstance(exc, JobTimedOut):
            exhausted = JobAttemptsExhausted(
                f"{record.attempts} attempts failed; the last: {error.message}"
            )
            error = job_error(exhausted)
        await self.end(backends, record, JobStatus.FAILED, started, error=error)

    async def end(
        self,
        backends: Backends,
        record: JobRecord,
        status: JobStatus,
        started: float,
        *,
        error: JobError | None = None,
        result_key: str | None = None,
        content_type: str | None = None,
        kept: int | None = 0,
    ) -> None:
        """``kept``: the credits a job keeps (a video's frames that ran): the rest are
        given back; None: all (a job that succeeded)."""
        now = self.clock()
        owned = await self.settle(
            lambda: backends.jobs.finish(
                record.id,
                self.owner,
                status,
                now,
                error=error,
                result_key=result_key,
                content_type=content_type,
            )
        )
        if not owned:
            return  # another runner took it over (lease expired); it finishes it
        if kept is not None:
            await self.queue.give_back(record, kept)
        elapsed = time.monotonic() - started
        self.metrics.jobs.labels(status.value).inc()
        self.metrics.job_duration.labels(status.value).observe(elapsed)
        self.queue.mean_job_s = 0.8 * self.queue.mean_job_s + 0.2 * elapsed
        # A segment's upload is its parent's, which goes when the parent ends; the
        # parent's end takes its segments' parts with it.
        if not self.keep_originals and record.parent is None:
            await anyio.to_thread.run_sync(backends.results.delete, record.input_key)
        if record.segments:
            await cut_video.delete_parts(backends.jobs, backends.results, record.id)
        finished = await backends.jobs.get(record.id)
        if finished is not None and finished.callback_url and self.notifier is not None:
            task = asyncio.create_task(self.notifier.notify(finished, backends.jobs))
            self.webhooks.add(task)
            task.add_done_callback(self.webhooks.discard)
        self.item_final(backends, record)

    async def settle(self, call: Callable[[], Awaitable[T]]) -> T:
        """A store write that ends an attempt, retried while the store is unavailable (up
        to a job time limit; after that the store's own repair requeues the job)."""
        deadline = time.monotonic() + max(30.0, self.timeout_s)
        delay = 0.2
        while True:
            try:
                return await call()
            except JobsUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    def item_final(self, backends: Backends, record: JobRecord) -> None:
        """A batch item is final: its batch may be complete (batch.completed, sent once)."""
        if record.batch_id is not None and self.item_finished is not None:
            done = self.item_finished(backends.jobs, record, self.clock(), self.notifier)
            batch_task = asyncio.create_task(done)
            self.webhooks.add(batch_task)
            batch_task.add_done_callback(self.webhooks.discard)
