"""Runs queued jobs in the serving process, on capacity sync requests leave idle.

A job is claimed only while the scheduler has a free inference slot (admitted tickets
below its concurrency), or, when only jobs hold tickets, as the one job waiting behind
them; it then holds a ticket like a request does: sync requests that arrive meanwhile
queue behind at most the jobs already started plus that one, and no job starts while sync
traffic fills the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread

from bgsvc.errors import (
    BgsvcError,
    JobAttemptsExhausted,
    JobExpired,
    JobsUnavailable,
    JobTimedOut,
)
from bgsvc.inference.scheduler import Scheduler, Ticket
from bgsvc.jobs import segments as cut_video
from bgsvc.jobs.endings import AttemptEnds, ItemFinished, job_error
from bgsvc.jobs.model import JobError, JobRecord, JobStatus
from bgsvc.jobs.notify import Notifier
from bgsvc.jobs.progress import VideoProgress
from bgsvc.jobs.queue import Backends, JobQueue, result_key
from bgsvc.metrics import Metrics
from bgsvc.options import RemovalOptions
from bgsvc.service import RemovalService
from bgsvc.service_video import Parts
from bgsvc.storage import default_sweep_interval

log = logging.getLogger(__name__)

_HOST = socket.gethostname()
# One warning per this many seconds while the job store (Redis) keeps failing.
UNAVAILABLE_LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class RunnerConfig:
    timeout_s: float
    max_attempts: int
    ttl_s: float
    keep_originals: bool
    poll_s: float = 0.2
    recover_every_s: float = 5.0
    # A running job older than its time limit plus this belongs to a dead process.
    lease_grace_s: float = 30.0
    # The most frames of an animation a job takes (None: a request's limit).
    max_frames: int | None = None


class JobRunner:
    """The asyncio task that claims, runs, retries, finishes and expires jobs."""

    def __init__(
        self,
        queue: JobQueue,
        service: RemovalService,
        scheduler: Scheduler,
        metrics: Metrics,
        config: RunnerConfig,
        *,
        parse_options: Callable[[dict[str, object]], RemovalOptions],
        serviceable: Callable[[], bool],
        notifier: Notifier | None = None,
        item_finished: ItemFinished | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.service = service
        self.scheduler = scheduler
        self.metrics = metrics
        self.config = config
        self.parse_options = parse_options
        self.serviceable = serviceable
        self.clock = clock
        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.running: set[asyncio.Task[None]] = set()
        # The running jobs that are a cut video's segments, with their frames' progress.
        self.segments: dict[asyncio.Task[None], VideoProgress] = {}
        # The webhooks and batch completions the runner's jobs send.
        self.webhooks: set[asyncio.Task[None]] = set()
        self.ends = AttemptEnds(
            queue,
            metrics,
            self.owner,
            max_attempts=config.max_attempts,
            timeout_s=config.timeout_s,
            keep_originals=config.keep_originals,
            notifier=notifier,
            item_finished=item_finished,
            clock=clock,
            webhooks=self.webhooks,
        )
        self._stopping = False
        self._next_recover = 0.0
        self._next_expire = 0.0
        self._unavailable_logged = -UNAVAILABLE_LOG_EVERY_S

    def orphaned(self, owner: str) -> bool:
        """Whether ``owner``'s process is gone (only knowable on this host)."""
        host, _, rest = owner.partition(":")
        pid_text, _, _token = rest.partition(":")
        if host != _HOST or owner == self.owner or not pid_text.isdigit():
            return False
        pid = int(pid_text)
        if pid == os.getpid():
            return True  # an earlier runner of this very process (an app restarted in it)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    async def run(self) -> None:
        """Until cancelled: maintenance, then claim while there is room, then wait."""
        while not self._stopping:
            try:
                backends = await self.queue.open(create=False)
                if backends is not None:
                    await self._maintain(backends)
                    if self.serviceable():
                        await self._claim(backends)
            except asyncio.CancelledError:
                raise
            except JobsUnavailable as exc:
                now = time.monotonic()
                if now - self._unavailable_logged >= UNAVAILABLE_LOG_EVERY_S:
                    self._unavailable_logged = now
                    log.warning("job store unavailable, jobs wait: %s", exc.__cause__ or exc)
            except Exception:
                log.exception("job runner tick failed")
            self.queue.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_s):
                    await self.queue.wake.wait()

    async def _maintain(self, backends: Backends) -> None:
        await backends.jobs.heartbeat()
        now = self.clock()
        while self.queue.ended:
            self.ends.item_final(backends, self.queue.ended.pop())
        if now >= self._next_recover:
            self._next_recover = now + self.config.recover_every_s
            stale = now - self.config.timeout_s - self.config.lease_grace_s
            requeued = await backends.jobs.recover(self.orphaned, stale)
            if requeued:
                log.warning("%d job(s) of a stopped process queued again", requeued)
        if now >= self._next_expire:
            self._next_expire = now + default_sweep_interval(self.config.ttl_s)
            await self.expire(backends, now)
            # The store's own sweep: leftovers of writers killed mid-publish, and objects
            # past the TTL whose record is gone.
            await anyio.to_thread.run_sync(backends.results.sweep)
        stats = await backends.jobs.stats()
        self.metrics.job_queue_depth.set(stats.queued)
        oldest = 0.0 if stats.oldest_queued_at is None else now - stats.oldest_queued_at
        self.metrics.job_oldest_age.set(max(0.0, oldest))

    async def expire(self, backends: Backends, now: float) -> int:
        """Expire jobs past the TTL (their objects go) and purge records a TTL later."""
        expired = await backends.jobs.expire(now - self.config.ttl_s)
        for record in expired:
            if record.finished_at is None and record.segments:
                # A video cut into segments that never got stitched: the frames they ran
                # went through the model, and are kept as a failure's would be; their
                # parts serve nothing any more.
                kept = await cut_video.frames_run(backends.jobs, record.id)
                await self.queue.give_back(record, kept)
                await cut_video.delete_parts(backends.jobs, backends.results, record.id)
            elif record.finished_at is None:  # still queued: it never ran, so no charge
                await self.queue.give_back(record)
            # A segment shares its parent's upload (the parent expires with it).
            for key in (record.result_key, None if record.parent else record.input_key):
                if key:
                    await anyio.to_thread.run_sync(backends.results.delete, key)
            self.ends.item_final(backends, record)
        if expired:
            self.metrics.jobs.labels("expired").inc(len(expired))
        await backends.jobs.purge(now - 2 * self.config.ttl_s)
        return len(expired)

    def _room(self) -> bool:
        """Whether to take one more job: a free inference slot, or, while only jobs hold
        tickets, one job waiting behind them, so that its download and decoding overlap
        the inference before it (as a second sync request's do); a sync request then
        waits for at most that one job more. Never beyond the process's capacity."""
        scheduler = self.scheduler
        admitted, jobs = scheduler.admitted, len(self.running)
        if admitted >= scheduler.capacity:
            return False
        if admitted < scheduler.max_concurrency:
            return jobs < scheduler.max_concurrency + 1
        if self.segments and not all(p.finishing for p in self.segments.values()):
            # A segment is many forward passes: one claimed behind it would take every
            # other one, both at half speed toward their attempt's time limit, while
            # another node may have a slot free for it. Once it is down to its last
            # ones, the next job's claim, media child and first frame overlap them rather
            # than leaving the model idle between the two.
            return False
        return admitted == jobs and jobs < scheduler.max_concurrency + 1

    async def _claim(self, backends: Backends) -> None:
        while not self._stopping and self._room():
            # The ticket first: a claimed job must never wait for a place.
            ticket = self.scheduler.try_admit()
            try:
                record = await backends.jobs.claim(self.owner, self.clock())
            except BaseException:
                ticket.close()  # a store that fails (Redis down) must not keep a slot
                raise
            if record is None:
                ticket.close()
                return
            # The frames of a video that go through the model in this attempt.
            progress = VideoProgress(
                backends.jobs, record.id, self.owner, on_finishing=self.queue.wake.set
            )
            task = asyncio.create_task(self._execute(backends, record, ticket, progress))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
            if record.parent is not None:
                self.segments[task] = progress
                task.add_done_callback(self._segment_ended)

    def _segment_ended(self, task: asyncio.Task[None]) -> None:
        self.segments.pop(task, None)

    async def _execute(
        self, backends: Backends, record: JobRecord, ticket: Ticket, progress: VideoProgress
    ) -> None:
        started = time.monotonic()
        try:
            if record.attempts > self.config.max_attempts:
                last = record.error.message if record.error else "the process running it died"
                exc = JobAttemptsExhausted(
                    f"{self.config.max_attempts} attempts failed; the last: {last}"
                )
                await self.ends.end(
                    backends, record, JobStatus.FAILED, started, error=job_error(exc)
                )
                return
            await self._attempt(backends, record, ticket, progress, started)
        except asyncio.CancelledError:
            # Shutdown: the job goes back to the queue for the next start (or process).
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    backends.jobs.requeue(
                        record.id, self.owner, JobError("canceled", "shutdown"), keep_turn=True
                    )
                )
            raise
        finally:
            ticket.close()

    async def _attempt(
        self,
        backends: Backends,
        record: JobRecord,
        ticket: Ticket,
        progress: VideoProgress,
        started: float,
    ) -> None:
        results = backends.results
        try:
            try:
                # Read within the attempt: a store that cannot be read now (StorageUnavailable,
                # 503) is retried like any failed attempt, not left running to its lease.
                stored = await anyio.to_thread.run_sync(results.get, record.input_key)
                if stored is None:
                    expired = JobExpired("The upload expired before the job could run.")
                    await self.ends.end(
                        backends, record, JobStatus.EXPIRED, started, error=job_error(expired)
                    )
                    return
                params, segment = cut_video.pop_segment(record.options)
                options = self.parse_options(params)
                async with asyncio.timeout(self.config.timeout_s):
                    parts = None
                    if record.segments:
                        parts = await self._parts(backends, record)
                        if parts is None:
                            return  # a segment failed: so did the video (ended there)
                    elif record.parent is None and await self._split(
                        backends, record, stored.data, options
                    ):
                        return  # its segments run as jobs; the last queues it again
                    result = await self.service.process(
                        ticket,
                        stored.data,
                        options,
                        timeout_s=self.config.timeout_s,
                        scope=record.tenant,
                        max_frames=self.config.max_frames,
                        progress=progress.report,
                        segment=segment,
                        parts=parts,
                        paid_frames=record.credits or None,
                    )
                    key = result_key(record, result.output.format)
                    # Published whole before the record says succeeded: no reader ever
                    # sees a job succeeded without its result, or a part of one.
                    await anyio.to_thread.run_sync(
                        results.put, key, result.output.body, result.output.media_type
                    )
            finally:
                # The slot goes back to sync traffic before the attempt's end is recorded
                # (which may wait out a Redis outage); the runner looks for the next job at
                # once rather than at its next poll, so a backlog runs back to back.
                ticket.close()
                self.queue.wake.set()
        except TimeoutError:
            exc = JobTimedOut(f"An attempt ran past {self.config.timeout_s:g} s.")
            await self.ends.retry_or_fail(backends, record, started, exc)
            return
        except BgsvcError as exc:
            if exc.status < 500:  # the input or the options: another attempt cannot help
                # A video that fails for what its file holds (cut short, more frames than
                # its header counted) keeps the credits of the frames that ran: else a
                # file made to fail at its end would buy all its model work for nothing.
                kept = progress.done or 0
                if exc.keeps_credits:  # the model ran for it (BgsvcError.keeps_credits)
                    kept = record.credits or kept
                if record.segments:  # the model's work was its segments'
                    kept = await cut_video.frames_run(backends.jobs, record.id)
                    await progress.report(kept, max(kept, record.frames_total or 0))
                await progress.write_last()
                await self.ends.end(
                    backends, record, JobStatus.FAILED, started, error=job_error(exc), kept=kept
                )
            else:
                await self.ends.retry_or_fail(backends, record, started, exc)
            return
        except Exception as exc:
            log.exception("job %s attempt %d failed", record.id, record.attempts)
            await self.ends.retry_or_fail(backends, record, started, exc)
            return
        await progress.write_last()
        await self.ends.end(
            backends,
            record,
            JobStatus.SUCCEEDED,
            started,
            result_key=key,
            content_type=result.output.media_type,
            # A video was charged the most frames it could deliver: the rest come back.
            kept=progress.done,
        )

    async def _split(
        self, backends: Backends, record: JobRecord, data: bytes, options: RemovalOptions
    ) -> bool:
        """Cut a video into segment jobs (the parent waits for them); False: not cut."""
        cuts, frames = await self.service.video_segments(data, options, record.credits or None)
        if len(cuts) < 2:
            return False
        segments = cut_video.segment_records(record, cuts)
        split = backends.jobs.split
        if await self.ends.settle(lambda: split(record.id, self.owner, segments, frames)):
            log.info("job %s: %d frames cut into %d segments", record.id, frames, len(cuts))
            self.metrics.jobs.labels("split").inc()
            self.queue.wake.set()
        return True

    async def _parts(self, backends: Backends, record: JobRecord) -> Parts | None:
        """The stitch's inputs: each segment's part, loaded when the stitch gets to it.
        None when a segment failed (the video is failed with its error here)."""
        segments = await backends.jobs.segments_of(record.id)
        error = cut_video.failure(record, segments)
        if error is None:
            loads = cut_video.part_loaders(backends.results, segments)
            return Parts(loads, cut_video.frames_of(segments))
        # What ran shows; it keeps those credits only when its file failed it.
        done = cut_video.frames_of(segments)
        total = max(done, record.frames_total or 0)
        kept = cut_video.kept_credits(error, segments)
        await self.ends.settle(lambda: backends.jobs.progress(record.id, self.owner, done, total))
        await self.ends.end(
            backends, record, JobStatus.FAILED, time.monotonic(), error=error, kept=kept
        )
        return None

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; give running jobs and webhooks ``grace_s`` to end, then cancel
        them (cancelled jobs are queued again)."""
        self._stopping = True
        self.queue.wake.set()
        pending = self.running | self.webhooks
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5.0)
