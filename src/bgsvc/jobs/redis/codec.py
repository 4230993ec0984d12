"""How the Redis job store writes records and maps Redis failures: job and batch hashes
to and from their dataclasses, and the decorator that turns a failed call into
JobsUnavailable."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import dramatiq.errors
import redis

from bgsvc.errors import JobsUnavailable
from bgsvc.jobs.model import BatchItem, BatchRecord, JobError, JobRecord, JobStatus

P = ParamSpec("P")
T = TypeVar("T")


def unavailable(
    fn: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (redis.RedisError, dramatiq.errors.BrokerConnectionError) as exc:
            raise JobsUnavailable(
                "The job queue is unavailable; retry later.", retry_after=5
            ) from exc

    return wrapper


def to_float(value: str | None) -> float | None:
    return float(value) if value else None


def record_from(fields: dict[str, str], webhooks: list[str]) -> JobRecord:
    error = None
    if fields.get("error_code"):
        error = JobError(fields["error_code"], fields.get("error_message", ""))
    return JobRecord(
        id=fields["id"],
        status=JobStatus(fields["status"]),
        created_at=float(fields["created_at"]),
        started_at=to_float(fields.get("started_at")),
        finished_at=to_float(fields.get("finished_at")),
        attempts=int(fields.get("attempts") or 0),
        error=error,
        options=json.loads(fields["options"]),
        input_key=fields["input_key"],
        fingerprint=fields["fingerprint"],
        result_key=fields.get("result_key") or None,
        content_type=fields.get("content_type") or None,
        client=fields.get("client", ""),
        idempotency_key=fields.get("idempotency_key") or None,
        callback_url=fields.get("callback_url") or None,
        webhook_attempts=[json.loads(w) for w in webhooks],
        owner=fields.get("owner") or None,
        batch_id=fields.get("batch_id") or None,
        tenant=fields.get("tenant") or None,
        credits=int(fields.get("credits") or 0),
        frames_done=_int_or_none(fields.get("frames_done")),
        frames_total=_int_or_none(fields.get("frames_total")),
        parent=fields.get("parent") or None,
        segments=int(fields.get("segments") or 0),
    )


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


def job_fields(record: JobRecord, message_id: str) -> dict[str, str]:
    return {
        "id": record.id,
        "status": record.status.value,
        "created_at": repr(record.created_at),
        "attempts": "0",
        "options": json.dumps(record.options),
        "input_key": record.input_key,
        "fingerprint": record.fingerprint,
        "client": record.client,
        "idempotency_key": record.idempotency_key or "",
        "callback_url": record.callback_url or "",
        "batch_id": record.batch_id or "",
        "tenant": record.tenant or "",
        "credits": str(record.credits),
        "parent": record.parent or "",
        "segments": str(record.segments),
        "msg": message_id,
    }


def flat(fields: dict[str, str]) -> list[str]:
    return [part for pair in fields.items() for part in pair]


def batch_fields(batch: BatchRecord) -> dict[str, str]:
    return {
        "id": batch.id,
        "created_at": repr(batch.created_at),
        "client": batch.client,
        "callback_url": batch.callback_url or "",
        "items": json.dumps([{"name": i.name, "job_id": i.job_id} for i in batch.items]),
        "tenant": batch.tenant or "",
    }


def batch_from(fields: dict[str, str], webhooks: list[str]) -> BatchRecord:
    return BatchRecord(
        id=fields["id"],
        created_at=float(fields["created_at"]),
        items=[BatchItem(i["name"], i["job_id"]) for i in json.loads(fields["items"])],
        client=fields.get("client", ""),
        callback_url=fields.get("callback_url") or None,
        completed_at=to_float(fields.get("completed_at")),
        webhook_attempts=[json.loads(w) for w in webhooks],
        tenant=fields.get("tenant") or None,
    )
