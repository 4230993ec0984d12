"""What a batch is: its items (a name and a job each) and the JSON clients see."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bgsvc.jobs.model import JobRecord, JobStatus


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
            status = JobStatus.EXPIRED if record is None else record.status
            error = None
            if record is not None and record.error is not None:
                error = {"code": record.error.code, "message": record.error.message}
            items.append(
                {
                    "name": item.name,
                    "job_id": item.job_id,
                    "status": status.value,
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
