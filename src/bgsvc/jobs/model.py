"""What a job and a batch are: their records, a job's states, and the JSON clients see.

Batch records live here, beside the jobs they group, because the job stores persist them.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # A video cut into segments: they run as jobs of their own on any node, and the last
    # to end queues it again, to stitch them (shown to clients as running).
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        """No attempt will run any more."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING)

    @property
    def public(self) -> str:
        """The status clients see: a video waiting on its segments is running."""
        return JobStatus.RUNNING.value if self is JobStatus.WAITING else self.value


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a stable code from bgsvc.errors and a message."""

    code: str
    message: str


def new_job_id() -> str:
    # A store key segment as it is (bgsvc.storage.check_key) and unguessable: the id is
    # the only thing that lets a client read a result.
    return f"job_{uuid.uuid4().hex}"


# What a job's or batch's id can be (they are made by new_job_id and new_batch_id, a
# segment's by segment_id). An id from a request that is not is never looked up: a store
# key built from it must not reach a record of another kind (Redis keeps a job's webhook
# attempts at job:<id>:wh).
_ID = re.compile(r"[a-z]+_[0-9a-zA-Z_]{1,64}")


def well_formed_id(value: str) -> bool:
    """Whether ``value`` may be a job's or a batch's id."""
    return _ID.fullmatch(value) is not None


def segment_id(parent: str, index: int) -> str:
    """The id of a video job's ``index``-th segment: derived, so cutting the same video
    again after a node's death names the same jobs."""
    return f"{parent}_s{index}"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC).isoformat()


@dataclass
class JobRecord:
    """One job as the store keeps it. Timestamps are Unix seconds."""

    id: str
    status: JobStatus
    created_at: float
    # The validated request parameters (the /remove-background query/form names), from
    # which the options are rebuilt when the job runs.
    options: dict[str, Any]
    input_key: str
    # sha256 of the image and the options: a retried Idempotency-Key must match it.
    fingerprint: str
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: JobError | None = None
    result_key: str | None = None
    content_type: str | None = None
    client: str = ""
    idempotency_key: str | None = None
    callback_url: str | None = None
    webhook_attempts: list[dict[str, Any]] = field(default_factory=list)
    # Who runs it now (runner id), so a restart knows which running jobs were its own.
    owner: str | None = None
    # The batch it is an item of (bgsvc.batches), if any.
    batch_id: str | None = None
    # The name of the API key that submitted it; None when auth is off. Only that key
    # may see, fetch or delete the job, and its idempotency keys are that key's alone.
    tenant: str | None = None
    # Credits the submission was charged for this job (refunded if it fails or is
    # canceled).
    credits: int = 0
    # A video's frames finished and in all, while and after it runs (None: not a video,
    # or not started yet).
    frames_done: int | None = None
    frames_total: int | None = None
    # A segment: the video job it is a part of (never shown to clients: its parent is).
    parent: str | None = None
    # A video cut into segments: how many (their ids are segment_id(id, 0..n-1)).
    segments: int = 0

    @property
    def public_status(self) -> str:
        """The status its client sees. A video cut into segments has run since it was cut:
        waiting on them, or queued again to be stitched, it is running."""
        if self.segments and self.status is JobStatus.QUEUED:
            return JobStatus.RUNNING.value
        return self.status.public

    def public(self) -> dict[str, Any]:
        """The JSON of GET /jobs/{id} (and of the webhook's ``data``)."""
        body: dict[str, Any] = {
            "id": self.id,
            # A video cut into segments has run since it was cut: queued again to be
            # stitched, it is still running to its client.
            "status": self.public_status,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "attempts": self.attempts,
            "error": None
            if self.error is None
            else {"code": self.error.code, "message": self.error.message},
            "status_url": f"/jobs/{self.id}",
            "result_url": f"/jobs/{self.id}/result" if self.status is JobStatus.SUCCEEDED else None,
        }
        if self.frames_total is not None:
            body["frames_done"] = self.frames_done or 0
            body["frames_total"] = self.frames_total
        if self.callback_url is not None:
            body["callback_url"] = self.callback_url
            body["webhook_attempts"] = list(self.webhook_attempts)
        return body


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class BatchItem:
    # The upload's file name (multipart filename or zip entry), without any directory.
    name: str
    job_id: str


@dataclass
class BatchRecord:
    id: str
    created_at: float
    items: list[BatchItem]
    client: str = ""
    callback_url: str | None = None
    # Set once, by whoever saw the last item become final (it sends batch.completed).
    completed_at: float | None = None
    webhook_attempts: list[dict[str, Any]] = field(default_factory=list)
    # The API key that submitted it (bgsvc.jobs.model.JobRecord.tenant).
    tenant: str | None = None

    def public(self, jobs: dict[str, JobRecord]) -> dict[str, Any]:
        """The JSON of GET /batches/{id} (and of the batch.completed webhook's ``data``);
        ``jobs`` are the items' records by id (a purged one counts as expired)."""
        items: list[dict[str, Any]] = []
        for item in self.items:
            record = jobs.get(item.job_id)
            # As GET /jobs/{id} says: a video being stitched is running, not queued (a
            # client must not read it as cancelable).
            status = JobStatus.EXPIRED.value if record is None else record.public_status
            error = None
            if record is not None and record.error is not None:
                error = {"code": record.error.code, "message": record.error.message}
            items.append(
                {
                    "name": item.name,
                    "job_id": item.job_id,
                    "status": status,
                    "error": error,
                }
            )
        counts = Counter(str(i["status"]) for i in items)
        overall = "running"
        if all(JobStatus(s).finished for s in counts):
            overall = "completed"
        elif counts[JobStatus.QUEUED.value] == len(items):
            overall = "queued"
        body: dict[str, Any] = {
            "id": self.id,
            "status": overall,
            "created_at": datetime.fromtimestamp(self.created_at, tz=UTC).isoformat(),
            "counts": {s.value: counts[s.value] for s in JobStatus},
            "items": items,
            "status_url": f"/batches/{self.id}",
            "result_url": f"/batches/{self.id}/result.zip",
        }
        if self.callback_url is not None:
            body["callback_url"] = self.callback_url
            body["webhook_attempts"] = list(self.webhook_attempts)
        return body
