"""Repairs of the Redis job store that dramatiq's redelivery does not cover.

dramatiq requeues the messages a dead runner had fetched. It cannot help when the message
itself is gone: a Redis without persistence restarted, a process killed between writing a
job and queueing its message, a duplicate delivery acked by another runner. And a live
runner that could not record a job's end (Redis was down then) still looks alive. Each
such job gets a fresh message; its old one, should it ever arrive, is stale and dropped.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgsvc.jobs.redis.jobs import RedisJobs

# How long one process holds the fleet-wide scan of queued jobs.
LOCK_MS = 5000


def _missing(store: RedisJobs, rmids: list[str | None]) -> list[bool]:
    """For each redis message id: is the message gone from dramatiq's message hash?"""
    pipe = store.redis.pipeline(transaction=False)
    for rmid in rmids:
        pipe.hexists(store._messages, rmid or "-")
    present = pipe.execute()
    return [not rmid or not found for rmid, found in zip(rmids, present, strict=True)]


def _fields(store: RedisJobs, ids: list[str], names: list[str]) -> list[list[str | None]]:
    pipe = store.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(store._job(job_id), names)
    return list(pipe.execute())


def reconcile(store: RedisJobs, *, older_than_s: float | None = None) -> int:
    """Give lost jobs a new message; the number of jobs repaired."""
    from bgsvc.jobs.redis.jobs import RECONCILE_AFTER_S, SCAN_LIMIT

    now = time.time()
    cutoff = now - (RECONCILE_AFTER_S if older_than_s is None else older_than_s)
    repaired = 0

    # Running jobs are few (at most the fleet's inference slots): every process looks.
    running = [
        str(i)
        for i in store.redis.zrangebyscore(store._running, "-inf", repr(cutoff), 0, SCAN_LIMIT)
    ]
    if running:
        pairs: list[tuple[str, float]] = store.redis.zrange(
            store._heartbeats, 0, -1, withscores=True
        )  # type: ignore[assignment]
        beats = {str(member): float(score) for member, score in pairs}
        rows = _fields(store, running, ["hb", "rmid"])
        gone = _missing(store, [row[1] for row in rows])
        now_ms = now * 1000
        for job_id, (hb, _rmid), lost in zip(running, rows, gone, strict=True):
            if not hb:
                continue
            mine = hb == store.broker_id
            alive = hb in beats and now_ms - beats[hb] < store.heartbeat_timeout_ms
            if (mine and job_id not in store._inflight) or (not mine and not alive and lost):
                message_id = str(uuid.uuid4())
                keys = [store._job(job_id), store._queued, store._running]
                if store._script("RESCUE", keys, [hb, message_id, job_id]):
                    store._enqueue(job_id, message_id)
                    repaired += 1

    # Queued jobs may be many: one process at a time, the oldest first.
    if not store.redis.set(f"{store.prefix}reconcile", store.broker_id, nx=True, px=LOCK_MS):
        return repaired
    queued = [
        str(i)
        for i in store.redis.zrangebyscore(store._queued, "-inf", repr(cutoff), 0, SCAN_LIMIT)
    ]
    if queued:
        rows = _fields(store, queued, ["msg", "rmid"])
        gone = _missing(store, [row[1] for row in rows])
        for job_id, (msg, _rmid), lost in zip(queued, rows, gone, strict=True):
            if lost and msg:
                message_id = str(uuid.uuid4())
                keys = [store._job(job_id), store._queued, store._turns]
                if store._script("REISSUE", keys, [msg, message_id]):
                    store._enqueue(job_id, message_id)
                    repaired += 1
    return repaired
