"""A claim that Redis ends halfway (the script ran, the record could not be read back)
leaves no job stuck running: the repair queues it again."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from bgsvc.jobs.base import Room
from bgsvc.jobs.model import JobRecord, JobStatus
from bgsvc.jobs.redis.reconcile import reconcile
from bgsvc.jobs.redis.store import RedisJobStore
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.redis


def _queued(job_id: str) -> JobRecord:
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        created_at=time.time(),
        options={},
        input_key=f"jobs/{job_id}/original",
        fingerprint="f",
    )


async def _claim_fails_with(store: RedisJobStore, name: str, stand_in: object) -> None:
    """One claim with the store's method ``name`` replaced by ``stand_in`` (Redis going
    away at that step): it must say the queue is unavailable; the method is put back."""
    real = getattr(store, name)
    setattr(store, name, stand_in)
    try:
        with pytest.raises(Exception, match="unavailable"):
            await store.claim("runner-1", time.time())
    finally:
        setattr(store, name, real)


def test_a_job_claimed_as_redis_fails_is_queued_again_by_the_repair(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)
    record = _queued("job_claimed")

    def lost(job_id: str) -> JobRecord | None:
        raise redis.ConnectionError("Redis went away")

    async def scenario() -> None:
        await store.create(record, Room(10, 10))
        await _claim_fails_with(store, "_read", lost)
        running = await store.get("job_claimed")
        assert running is not None and running.status is JobStatus.RUNNING
        assert reconcile(store, older_than_s=0) == 1
        again = await store.get("job_claimed")
        assert again is not None and again.status is JobStatus.QUEUED
        claimed = await store.claim("runner-1", time.time())
        assert claimed is not None and claimed.id == "job_claimed"
        await store.close()

    asyncio.run(scenario())


def test_a_finish_whose_reply_was_lost_is_answered_as_done_when_retried(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # Redis applies FINISH, then dies before the reply: the runner retries the same call
    # and must hear "yours, done" (so it removes the upload and sends the webhook), while
    # another runner's finish of the same job is still refused.
    store = RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)
    record = _queued("job_replayed")

    async def scenario() -> None:
        await store.create(record, Room(10, 10))
        claimed = await store.claim("runner-1", time.time())
        assert claimed is not None
        now = time.time()
        done = {"result_key": "jobs/job_replayed/result.png", "content_type": "image/png"}
        assert await store.finish("job_replayed", "runner-1", JobStatus.SUCCEEDED, now, **done)
        assert await store.finish("job_replayed", "runner-1", JobStatus.SUCCEEDED, now, **done)
        later = now + 1.0
        assert not await store.finish("job_replayed", "runner-2", JobStatus.SUCCEEDED, later)
        assert not await store.finish("job_replayed", "runner-1", JobStatus.FAILED, now)
        final = await store.get("job_replayed")
        assert final is not None and final.status is JobStatus.SUCCEEDED
        await store.close()

    asyncio.run(scenario())


def test_a_message_fetched_as_redis_fails_is_claimed_once_redis_answers(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # Redis goes between taking the message and the claim script: the record is still
    # queued and its message held by this live consumer, which dramatiq never redelivers
    # and the repair does not see as lost (a fleet's batch kept an item queued for good).
    store = RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)
    record = _queued("job_fetched")
    script = store._script

    def down(name: str, keys: list[str], args: list[object]) -> object:
        if name == "CLAIM":
            raise redis.ConnectionError("Redis went away")
        return script(name, keys, args)

    async def scenario() -> None:
        await store.create(record, Room(10, 10))
        await _claim_fails_with(store, "_script", down)
        queued = await store.get("job_fetched")
        assert queued is not None and queued.status is JobStatus.QUEUED
        assert reconcile(store, older_than_s=0) == 0
        claimed = await store.claim("runner-1", time.time())
        assert claimed is not None and claimed.id == "job_fetched"
        assert claimed.status is JobStatus.RUNNING
        await store.close()

    asyncio.run(scenario())
