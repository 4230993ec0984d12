"""What the routes ask of jobs: submit, look up, fetch the result, cancel or delete.

The stores are opened on first use (or at start when the job database already exists), so
a node that never takes a job writes nothing to its data directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread

from bgsvc.errors import (
    IdempotencyKeyReused,
    JobExpired,
    JobHasNoResult,
    JobNotFinished,
    JobNotFound,
    JobQueueFull,
    JobRunning,
)
from bgsvc.jobs import segments as cut_video
from bgsvc.jobs.base import JobStore, NoRoom, Room
from bgsvc.jobs.model import JobRecord, JobStatus, new_job_id, well_formed_id
from bgsvc.storage import ResultStore, StoredObject

ORIGINAL_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Backends:
    jobs: JobStore
    results: ResultStore


def job_prefix(job_id: str, tenant: str | None) -> str:
    """Where a job's objects live: under its key's folder, so that a store's own tools
    (S3 lifecycle rules, bucket policies, a per-tenant export) can tell tenants apart.
    A key name that is no valid first character of a store segment (a leading '.') keeps
    the flat layout, as do jobs submitted without a key."""
    if tenant and tenant[0].isalnum():
        return f"tenants/{tenant}/jobs/{job_id}"
    return f"jobs/{job_id}"


def input_key(job_id: str, tenant: str | None = None) -> str:
    return f"{job_prefix(job_id, tenant)}/original"


def result_key(record: JobRecord, fmt: str) -> str:
    # One key per job whatever the attempt: a second run after a crash publishes over the
    # first, so there is never more than one result object. Beside the input, wherever the
    # record says that is (records older than the per-tenant layout keep theirs).
    folder = record.input_key.rpartition("/")[0] or job_prefix(record.id, None)
    if record.parent is not None:
        # A video's segments share their parent's folder (and its upload).
        return f"{folder}/{record.id}.{fmt.lower()}"
    return f"{folder}/result.{fmt.lower()}"


def fingerprint(data: bytes, options: dict[str, Any], callback_url: str | None = None) -> str:
    """sha256 of everything a submission asks for: a retried Idempotency-Key must ask for
    the same image, options and webhook."""
    digest = hashlib.sha256(data)
    digest.update(json.dumps(options, sort_keys=True).encode())
    digest.update(b"\0" + (callback_url or "").encode())
    return digest.hexdigest()


def month_of(ts: float) -> tuple[int, int]:
    when = datetime.fromtimestamp(ts, tz=UTC)
    return when.year, when.month


def visible(record_tenant: str | None, viewer: str | None) -> bool:
    """Whether ``viewer`` (the requesting key's name; None when keys are off) may see a
    job or batch of ``record_tenant``. Another key's work does not exist for it (404, not
    403), and neither does work submitted without a key."""
    return viewer is None or record_tenant == viewer


class JobQueue:
    """Submission and lookup over a job store and a result store."""

    def __init__(
        self,
        open_backends: Callable[[], Backends],
        exists: Callable[[], bool],
        *,
        queue_limit: int,
        queue_limit_per_key: int | None = None,
        concurrency: int,
        keep_originals: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._open_backends = open_backends
        self._exists = exists
        self.queue_limit = queue_limit
        self.queue_limit_per_key = queue_limit_per_key or queue_limit
        # Gives a key back the credits of a job that produced no result (failed, canceled,
        # expired before it ran); set by the app, which owns the limits.
        self.refund: Callable[[str, int], Awaitable[None]] | None = None
        self.concurrency = max(1, concurrency)
        self.keep_originals = keep_originals
        self.clock = clock
        self.backends: Backends | None = None
        self._opening = asyncio.Lock()
        self.wake = asyncio.Event()
        # Batch items that became final outside a runner (canceled here): the runner's next
        # tick checks their batches for completion, as it does for the items it ends.
        self.ended: list[JobRecord] = []
        # Mean seconds per job (EWMA, the runner feeds it), for Retry-After.
        self.mean_job_s = 1.0

    async def open(self, create: bool) -> Backends | None:
        """The stores; None when ``create`` is false and no job was ever submitted here."""
        if self.backends is not None:
            return self.backends
        async with self._opening:
            if self.backends is None and (create or self._exists()):
                self.backends = await anyio.to_thread.run_sync(self._open_backends)
        return self.backends

    async def submit(
        self,
        data: bytes,
        options: dict[str, Any],
        *,
        client: str,
        idempotency_key: str | None,
        callback_url: str | None,
        tenant: str | None = None,
        credits: int = 0,
    ) -> tuple[JobRecord, bool]:
        """A new queued job, or (with an Idempotency-Key this tenant used before) the job
        it names and False. Raises JobQueueFull or IdempotencyKeyReused."""
        backends = await self.open(create=True)
        assert backends is not None
        if idempotency_key is None:
            # Early, to spare the upload's write; the store checks again as it inserts. A
            # retry with a key may find its job even when the queue is full.
            await self.check_room(backends, tenant, 1)
        record = JobRecord(
            id=new_job_id(),
            status=JobStatus.QUEUED,
            created_at=self.clock(),
            options=options,
            input_key="",
            fingerprint=fingerprint(data, options, callback_url),
            client=client,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            tenant=tenant,
            credits=credits,
        )
        record.input_key = input_key(record.id, tenant)
        # The upload is published before the record exists, so a runner never claims a job
        # whose input is not there yet.
        await anyio.to_thread.run_sync(backends.results.put, record.input_key, data, ORIGINAL_TYPE)
        try:
            stored, created = await backends.jobs.create(record, self.room)
        except NoRoom as exc:
            await anyio.to_thread.run_sync(backends.results.delete, record.input_key)
            raise self.full(exc, 1) from None
        if not created:
            await anyio.to_thread.run_sync(backends.results.delete, record.input_key)
            if stored.fingerprint != record.fingerprint:
                raise _key_reused()
        self.wake.set()
        return stored, created

    async def find_idempotent(
        self, key: str, *, client: str, tenant: str | None = None
    ) -> JobRecord | None:
        """The job an earlier submission with this Idempotency-Key made (None if none yet),
        found before anything is read, charged or stored (check_retry then compares)."""
        backends = await self.open(create=False)
        if backends is None:
            return None
        return await backends.jobs.find_idempotent(key, tenant, client)

    @property
    def room(self) -> Room:
        return Room(self.queue_limit, self.queue_limit_per_key)

    def full(self, exc: NoRoom, jobs: int) -> JobQueueFull:
        """The client's answer when ``jobs`` more do not fit: one tenant filling its share
        leaves the others theirs."""
        wait = max(1, math.ceil((exc.unfinished + jobs) * self.mean_job_s / self.concurrency))
        if exc.scope == "tenant":
            return JobQueueFull(
                f"This API key has {exc.unfinished} unfinished jobs of the "
                f"{self.queue_limit_per_key} it may have; {jobs} more were sent. Retry once "
                "some finish.",
                retry_after=wait,
            )
        room = max(0, self.queue_limit - exc.unfinished)
        return JobQueueFull(
            f"The queue has room for {room} jobs, {jobs} were sent; retry later.",
            retry_after=wait,
        )

    async def check_room(self, backends: Backends, tenant: str | None, jobs: int) -> None:
        """JobQueueFull unless the queue and the tenant's share have room for ``jobs`` more
        now. Advisory (two submissions may both pass it): the store's create decides."""
        taken = await backends.jobs.places()
        if taken + jobs > self.queue_limit:
            raise self.full(NoRoom("queue", taken), jobs)
        if tenant is not None:
            mine = await backends.jobs.tenant_unfinished(tenant)
            if mine + jobs > self.queue_limit_per_key:
                raise self.full(NoRoom("tenant", mine), jobs)

    async def get(self, job_id: str, viewer: str | None = None) -> JobRecord:
        """The job, as ``viewer`` (the requesting key's name) may see it: JobNotFound for
        another key's job, exactly as for one that does not exist."""
        if not well_formed_id(job_id):
            raise JobNotFound(f"No job {job_id!r}.")
        backends = await self.open(create=False)
        record = None if backends is None else await backends.jobs.get(job_id)
        # A segment is its video job's business: clients see that job, never its parts.
        if record is None or record.parent is not None or not visible(record.tenant, viewer):
            raise JobNotFound(f"No job {job_id!r}.")
        if record.segments and not record.status.finished and backends is not None:
            # Its frames go through the model in its segments, until it is stitched.
            done = await cut_video.frames_run(backends.jobs, job_id)
            record.frames_done = max(record.frames_done or 0, done)
        return record

    async def give_back(self, record: JobRecord, kept: int = 0) -> None:
        """Refund the credits of a job that ends without a result (called once per job:
        by whoever moved it to failed, canceled or expired), less ``kept`` (work it had
        done). Only within the calendar month (UTC) it was charged in: quotas are
        monthly, and a refund in the next month would be a free credit there."""
        credits = record.credits - min(max(kept, 0), record.credits)
        if not credits or record.tenant is None or self.refund is None:
            return
        if month_of(record.created_at) == month_of(self.clock()):
            await self.refund(record.tenant, credits)

    async def result(self, job_id: str, viewer: str | None = None) -> StoredObject | str:
        """The result object, or a URL to send the client to (presigned S3)."""
        record = await self.get(job_id, viewer)
        if not record.status.finished:
            raise JobNotFinished(f"Job {job_id} is {record.public_status}.", retry_after=1)
        if record.status is JobStatus.EXPIRED:
            raise JobExpired(f"The result of job {job_id} has expired.")
        if record.status is not JobStatus.SUCCEEDED or record.result_key is None:
            raise JobHasNoResult(f"Job {job_id} is {record.status.value}: it has no result.")
        assert self.backends is not None
        results = self.backends.results
        url = await anyio.to_thread.run_sync(results.url, record.result_key)
        if url is not None:
            return url
        found = await anyio.to_thread.run_sync(results.get, record.result_key)
        if found is None:
            raise JobExpired(f"The result of job {job_id} has expired.")
        return found

    async def cancel_or_delete(self, job_id: str, viewer: str | None = None) -> JobRecord | None:
        """Cancel a queued job (its record, now canceled, is returned) or delete a
        finished one with its objects (None). Raises JobRunning for a running job."""
        record = await self.get(job_id, viewer)
        assert self.backends is not None
        backends = self.backends
        # A video whose segments ran is queued again only to be stitched: its frames went
        # through the model, so it finishes rather than being canceled for a full refund.
        if record.status is JobStatus.QUEUED and not record.segments:
            if await backends.jobs.cancel(job_id, self.clock()):
                await self.give_back(record)
                if not self.keep_originals:
                    await anyio.to_thread.run_sync(backends.results.delete, record.input_key)
                canceled = await self.get(job_id)
                if canceled.batch_id is not None:
                    self.ended.append(canceled)
                    self.wake.set()
                return canceled
            record = await self.get(job_id)  # a runner took it meanwhile
        if not record.status.finished:
            raise JobRunning(f"Job {job_id} is running; it cannot be canceled now.")
        for key in (record.result_key, record.input_key):
            if key:
                await anyio.to_thread.run_sync(backends.results.delete, key)
        if record.segments:
            await cut_video.delete_parts(backends.jobs, backends.results, job_id)
        await backends.jobs.delete(job_id)
        return None

    async def aclose(self) -> None:
        if self.backends is not None:
            await self.backends.jobs.close()


def _key_reused() -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        "This Idempotency-Key was used for another image, other options or another callback_url."
    )


def check_retry(
    record: JobRecord, data: bytes, options: dict[str, Any], callback_url: str | None
) -> None:
    """IdempotencyKeyReused unless a retry sends what made ``record``."""
    if record.fingerprint != fingerprint(data, options, callback_url):
        raise _key_reused()
