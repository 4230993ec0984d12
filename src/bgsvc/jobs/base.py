"""Where job records live: the interface a queue backend implements.

Every method is a coroutine so that a backend on the network (Redis) fits as well as the
embedded one (SQLite, whose calls go to a worker thread). The state changes a runner makes
are conditional on the job being in the state, and with the owner, it expects, so two
runners (two processes, or a run that outlived its owner's restart) can never both move
one job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bgsvc.jobs.model import BatchRecord, JobError, JobRecord, JobStatus


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    # created_at of the oldest queued job; None when none is queued.
    oldest_queued_at: float | None

    @property
    def unfinished(self) -> int:
        return self.queued + self.running


@dataclass(frozen=True)
class Room:
    """The most unfinished (queued or running) jobs the queue may hold, and one tenant."""

    limit: int
    per_tenant: int


class NoRoom(Exception):
    """A create would take the queue, or the tenant's share of it, past its ``Room``.
    Checked in the same atomic step as the insert, so concurrent submissions cannot all
    pass a count made before any of them was written."""

    def __init__(self, scope: Literal["queue", "tenant"], unfinished: int) -> None:
        super().__init__(f"{scope} full ({unfinished} unfinished)")
        self.scope = scope
        self.unfinished = unfinished


class JobStore(Protocol):
    async def create(self, record: JobRecord, room: Room) -> tuple[JobRecord, bool]:
        """Insert ``record``; when its idempotency key already names a job of the same
        tenant (of the same client address, for jobs without a tenant), that job and
        False instead (whatever the room). NoRoom when there is none."""
        ...

    async def find_idempotent(self, key: str, tenant: str | None, client: str) -> JobRecord | None:
        """The job this idempotency key names for ``tenant`` (for ``client``, the address,
        when there is no tenant), as ``create`` would find it; None if none."""
        ...

    async def tenant_unfinished(self, tenant: str) -> int:
        """How many of ``tenant``'s jobs are queued or running."""
        ...

    async def places(self) -> int:
        """How many places of the queue's room are taken, as ``create`` counts them: a
        video cut into segments is one, its segments none (``stats`` counts the work)."""
        ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def stats(self) -> QueueStats: ...

    async def heartbeat(self) -> None:
        """Called on every runner tick: a shared store learns this process is alive."""
        ...

    async def claim(self, owner: str, now: float) -> JobRecord | None:
        """The queued job of the lowest turn (docs/jobs-queue.md, "Order: keys take
        turns"), now running for ``owner`` with one more attempt."""
        ...

    async def requeue(
        self, job_id: str, owner: str, error: JobError, *, keep_turn: bool = False
    ) -> bool:
        """Put ``owner``'s running job back in the queue (keeping its attempts): at its
        key's next turn after a failed attempt, at its own turn when ``keep_turn`` (its
        process is stopping: the job was not at fault)."""
        ...

    async def finish(
        self,
        job_id: str,
        owner: str,
        status: JobStatus,
        now: float,
        *,
        error: JobError | None = None,
        result_key: str | None = None,
        content_type: str | None = None,
    ) -> bool:
        """End ``owner``'s running job; False when it is not (no longer) theirs. When it
        is a segment and the last of its parent's to end (none queued or running), the
        waiting parent is queued again in the same step, for a runner to stitch."""
        ...

    async def progress(self, job_id: str, owner: str, done: int, total: int) -> None:
        """Record ``owner``'s running job's frames done and in all (a video's); nothing
        when the job is not (no longer) theirs."""
        ...

    async def cancel(self, job_id: str, now: float) -> bool:
        """Queued to canceled; False when the job is not queued, or is a video queued
        again only to be stitched (its segments ran: it finishes, and keeps what its
        frames cost, rather than being canceled for a full refund)."""
        ...

    async def delete(self, job_id: str) -> None:
        """Delete the job's record and its segments' records."""
        ...

    async def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None: ...

    async def recover(self, orphaned: Callable[[str], bool], started_before: float) -> int:
        """Queue again every running job whose owner is gone (``orphaned(owner)``) or
        that started before ``started_before`` (past any attempt's time limit)."""
        ...

    async def expire(self, before: float) -> list[JobRecord]:
        """Mark expired every job finished (or, queued, created) before ``before``."""
        ...

    async def purge(self, before: float) -> int:
        """Delete the records of jobs that expired and finished before ``before``, and of
        batches none of whose items has a record any more."""
        ...

    # A video cut into segments: each a job of its own (any node claims it), the parent
    # waiting meanwhile; the last segment's finish queues the parent again, to stitch.
    async def split(
        self, job_id: str, owner: str, segments: list[JobRecord], frames_total: int
    ) -> bool:
        """At once: ``owner``'s running job becomes waiting (no owner, ``segments`` set to
        their count, ``frames_total`` recorded, its attempts back to 0 for the stitch's own,
        out of the running jobs) and ``segments`` (complete queued records: ids
        segment_id(job_id, i), ``parent`` job_id, no credits) are queued, in order, at the
        key's next turns. False, and nothing changes, when the job is not (no
        longer) ``owner``'s. Segments take no queue room and do not count among the
        tenant's unfinished jobs (the parent does)."""
        ...

    async def segments_of(self, job_id: str) -> list[JobRecord]:
        """The job's segments in order (those that still have a record)."""
        ...

    # Batches: a record naming its items' jobs, each job carrying the batch id.
    async def create_batch(self, batch: BatchRecord, jobs: list[JobRecord], room: Room) -> None:
        """Insert the batch and all its jobs at once (none of them if any fails, or NoRoom
        when the room cannot take them all)."""
        ...

    async def get_batch(self, batch_id: str) -> BatchRecord | None: ...

    async def batch_jobs(self, batch_id: str) -> list[JobRecord]: ...

    async def complete_batch(self, batch_id: str, now: float) -> BatchRecord | None:
        """Mark the batch completed when every item is final and nobody did yet: the
        batch for exactly one caller (who sends batch.completed), else None."""
        ...

    async def add_batch_webhook_attempt(self, batch_id: str, attempt: dict[str, Any]) -> None: ...

    async def delete_batch(self, batch_id: str) -> None:
        """Delete the batch record only (its items go through ``delete``)."""
        ...

    async def close(self) -> None: ...
