"""The shared job store (``BGSVC_REDIS_URL``): the jobs of bgsvc.jobs.redis.jobs, and
their batches, a hash per batch naming its items' jobs."""

from __future__ import annotations

import json
import uuid
from typing import Any

from bgsvc.jobs.base import Room
from bgsvc.jobs.model import BatchRecord, JobRecord
from bgsvc.jobs.redis.codec import batch_fields, batch_from, job_fields, unavailable
from bgsvc.jobs.redis.jobs import SCAN_LIMIT, RedisJobs, no_room


class RedisJobStore(RedisJobs):
    """:class:`bgsvc.jobs.base.JobStore` shared by every node through one Redis."""

    @unavailable
    async def create_batch(self, batch: BatchRecord, jobs: list[JobRecord], room: Room) -> None:
        def create() -> None:
            messages = {record.id: str(uuid.uuid4()) for record in jobs}
            fields = [job_fields(record, messages[record.id]) for record in jobs]
            keys = [
                self._batch(batch.id),
                self._batches,
                self._queued,
                self._running,
                self._open(batch.tenant),
                self._waiting,
            ]
            args = [
                repr(batch.created_at),
                f"{self.prefix}job:",
                room.limit,
                room.per_tenant,
                json.dumps(batch_fields(batch)),
                json.dumps(fields),
            ]
            # One script: the room is counted and every record written at once.
            no_room(self._script("CREATE_BATCH", keys, args))
            try:
                for record in jobs:
                    self._enqueue(record.id, messages[record.id])
            except BaseException:
                for record in jobs:
                    self._delete(record.id)
                self._delete_batch(batch.id)
                raise

        await self._run(create)

    def _read_batch(self, batch_id: str) -> BatchRecord | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._batch(batch_id))
        pipe.lrange(f"{self._batch(batch_id)}:wh", 0, -1)
        fields, webhooks = pipe.execute()
        return batch_from(fields, webhooks) if fields else None

    @unavailable
    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        return await self._run(lambda: self._read_batch(batch_id))

    @unavailable
    async def batch_jobs(self, batch_id: str) -> list[JobRecord]:
        def read() -> list[JobRecord]:
            batch = self._read_batch(batch_id)
            if batch is None:
                return []
            records = [self._read(item.job_id) for item in batch.items]
            return [r for r in records if r is not None]

        return await self._run(read)

    @unavailable
    async def complete_batch(self, batch_id: str, now: float) -> BatchRecord | None:
        def complete() -> BatchRecord | None:
            batch = self._read_batch(batch_id)
            if batch is None:
                return None
            ids = [item.job_id for item in batch.items]
            args = [repr(now), f"{self.prefix}job:", *ids]
            if not self._script("COMPLETE_BATCH", [self._batch(batch_id)], args):
                return None
            return self._read_batch(batch_id)

        return await self._run(complete)

    @unavailable
    async def add_batch_webhook_attempt(self, batch_id: str, attempt: dict[str, Any]) -> None:
        keys = [self._batch(batch_id), f"{self._batch(batch_id)}:wh"]
        await self._run(lambda: self._script("ADD_WEBHOOK_ATTEMPT", keys, [json.dumps(attempt)]))

    def _delete_batch(self, batch_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._batch(batch_id), f"{self._batch(batch_id)}:wh")
        pipe.zrem(self._batches, batch_id)
        pipe.execute()

    @unavailable
    async def delete_batch(self, batch_id: str) -> None:
        await self._run(lambda: self._delete_batch(batch_id))

    @unavailable
    async def purge(self, before: float) -> int:
        purged: int = await super().purge(before)

        def purge_batches() -> None:
            # A batch goes once none of its items is left (expired and purged, or deleted).
            old = self.redis.zrangebyscore(self._batches, "-inf", f"({before!r}", 0, SCAN_LIMIT)
            for batch_id in map(str, old):
                batch = self._read_batch(batch_id)
                keys = [self._job(i.job_id) for i in batch.items] if batch else []
                if not keys or not self.redis.exists(*keys):
                    self._delete_batch(batch_id)

        await self._run(purge_batches)
        return purged
