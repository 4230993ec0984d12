"""A claim that Redis ends halfway (the script ran, the record could not be read back)
leaves no job stuck running: the repair queues it again."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from bgsvc.jobs.model import JobRecord, JobStatus
from bgsvc.jobs.redis_reconcile import reconcile
from bgsvc.jobs.redis_store import RedisJobStore
from bgsvc.jobs.store import Room
from tests.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.redis


def test_a_job_claimed_as_redis_fails_is_queued_again_by_the_repair(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)
    record = JobRecord(
        id="job_claimed",
        status=JobStatus.QUEUED,
        created_at=time.time(),
        options={},
        input_key="jobs/job_claimed/original",
        fingerprint="f",
    )

    def lost(job_id: str) -> JobRecord | None:
        raise redis.ConnectionError("Redis went away")

    async def scenario() -> None:
        await store.create(record, Room(10, 10))
        read = store._read
        store._read = lost  # type: ignore[method-assign]
        with pytest.raises(Exception, match="unavailable"):
            await store.claim("runner-1", time.time())
        store._read = read  # type: ignore[method-assign]
        running = await store.get("job_claimed")
        assert running is not None and running.status is JobStatus.RUNNING
        assert reconcile(store, older_than_s=0) == 1
        again = await store.get("job_claimed")
        assert again is not None and again.status is JobStatus.QUEUED
        claimed = await store.claim("runner-1", time.time())
        assert claimed is not None and claimed.id == "job_claimed"
        await store.close()

    asyncio.run(scenario())
