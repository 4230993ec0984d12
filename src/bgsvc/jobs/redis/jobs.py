"""The shared job store's jobs: records in Redis, delivery by dramatiq's Redis broker
(its batches: bgsvc.jobs.redis.store).

Why both: dramatiq delivers each job's message to one runner and, when that runner's
process dies (its heartbeat stops), hands the message to another one; the records (status,
attempts, webhook attempts) and their conditional changes are ours, in Lua scripts
(bgsvc.jobs.redis.scripts). A message only names a job and which of its messages it is,
so a duplicate or stale delivery is recognised by the record and dropped; a job runs again
only when its runner is dead (docs/jobs-queue.md has the measurements behind the choice).

All calls are synchronous redis-py in a worker thread; a Redis that does not answer is
JobsUnavailable (503 with Retry-After to clients, a skipped tick to the runner).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
import dramatiq
import dramatiq.errors
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker

from bgsvc.errors import JobsUnavailable
from bgsvc.jobs.base import NoRoom, QueueStats, Room
from bgsvc.jobs.model import JobError, JobRecord, JobStatus, segment_id
from bgsvc.jobs.redis import scripts as lua
from bgsvc.jobs.redis.codec import flat, job_fields, record_from, unavailable
from bgsvc.jobs.redis.reconcile import reconcile

T = TypeVar("T")

log = logging.getLogger(__name__)

NAMESPACE = "bgsvc:dq"
QUEUE = "jobs"
ACTOR = "bgsvc.run_job"
# A queued or running job this old whose message is missing is given a new one.
RECONCILE_AFTER_S = 30.0
# Jobs looked at per reconcile, expire or purge call (the rest at the next one).
SCAN_LIMIT = 500


def no_room(answer: str) -> None:
    """NoRoom for a create script's "full:<scope>:<unfinished>" answer."""
    if answer.startswith("full:"):
        _, scope, unfinished = answer.split(":")
        raise NoRoom("tenant" if scope == "tenant" else "queue", int(unfinished))


class RedisJobs:
    """The jobs half of :class:`bgsvc.jobs.redis.store.RedisJobStore`."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        heartbeat_timeout_s: float,
        socket_timeout_s: float = 2.0,
        prefix: str = "bgsvc:jobs:",
        namespace: str = NAMESPACE,
    ) -> None:
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_timeout_s,
        }
        self.redis = redis.Redis.from_url(url, decode_responses=True, **options)
        # dramatiq decodes message bodies from bytes: a client of its own.
        self.broker = RedisBroker(  # type: ignore[no-untyped-call]
            client=redis.Redis.from_url(url, **options),
            namespace=namespace,
            middleware=[],
            heartbeat_timeout=int(heartbeat_timeout_s * 1000),
            # Maintenance (requeueing a dead runner's messages) on every call: it is one
            # ZRANGEBYSCORE unless a runner died.
            maintenance_chance=1_000_000,
        )
        self.broker.declare_queue(QUEUE)
        self.heartbeat_timeout_ms = int(heartbeat_timeout_s * 1000)
        self.ttl_ms = int(ttl_s * 1000)
        self.prefix = prefix
        self._queued = f"{prefix}queued"
        self._running = f"{prefix}running"
        self._finished = f"{prefix}finished"
        self._expired = f"{prefix}expired"
        self._waiting = f"{prefix}waiting"
        self._batches = f"{prefix}batches"
        # Turns between keys (scripts.PLACE): each placed message's turn, the latest turn
        # claimed, a count of placements, and where each key's queued turns are.
        self._turns = f"{prefix}turns"
        self._clock = f"{prefix}turns:clock"
        self._placed = f"{prefix}turns:placed"
        self._key_turns = f"{prefix}turns:"
        self._heartbeats = f"{namespace}:__heartbeats__"
        self._messages = f"{namespace}:{QUEUE}.msgs"
        # dramatiq's list of the queue's message ids, fetched from the head.
        self._queue_list = f"{namespace}:{QUEUE}"
        self._scripts = {
            name: self.redis.register_script(getattr(lua, name))
            for name in (
                "CREATE",
                "CLAIM",
                "REQUEUE",
                "FINISH",
                "PROGRESS",
                "ADD_WEBHOOK_ATTEMPT",
                "CANCEL",
                "PLACES",
                "REISSUE",
                "PLACE",
                "EXPIRE",
                "COMPLETE_BATCH",
                "RESCUE",
                "TENANT_UNFINISHED",
                "CREATE_BATCH",
                "SPLIT",
                "DELETE",
            )
        }
        # timeout=0: an empty queue answers at once; the runner decides when to look again.
        self._consumer: Any = self.broker.consume(QUEUE, prefetch=1, timeout=0)
        self._consumer_lock = threading.Lock()
        # The messages of the jobs this process runs, to ack when they end.
        self._inflight: dict[str, MessageProxy] = {}
        # Messages fetched whose claim Redis did not answer: still held by this consumer
        # (dramatiq redelivers a message only when its consumer dies), so claimed first
        # next time rather than left queued for as long as this process lives.
        self._unclaimed: list[MessageProxy] = []

    @property
    def broker_id(self) -> str:
        return str(self.broker.broker_id)

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _batch(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}"

    def _open(self, tenant: str | None) -> str:
        """The sorted set of a tenant's unfinished jobs ("" for jobs without one)."""
        return f"{self.prefix}tenant:{tenant}:open" if tenant is not None else ""

    def _idem(self, record: JobRecord) -> str:
        if record.idempotency_key is None:
            return ""
        return self._idem_key(record.idempotency_key, record.tenant, record.client)

    def _idem_key(self, key: str, tenant: str | None, client: str) -> str:
        # Per tenant; per client address only for jobs submitted without a key. The two
        # never meet: key names hold no ':' and the marker differs.
        if tenant is not None:
            return f"{self.prefix}idem:key:{tenant}:{key}"
        return f"{self.prefix}idem:addr:{client}:{key}"

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts[name](keys=keys, args=args)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn)

    # --- messages ----------------------------------------------------------------------

    def _enqueue(self, job_id: str, message_id: str) -> None:
        """Send the job's message, placed at its turn (scripts.PLACE): its key's next one,
        or the one it keeps (a video queued again to be stitched keeps the video's, a turn
        already claimed, and so runs next)."""
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=QUEUE,
            actor_name=ACTOR,
            args=(job_id,),
            kwargs={},
            options={},
            message_id=message_id,
        )
        sent = self.broker.enqueue(message)
        keys = [self._job(job_id), self._queue_list, self._turns, self._clock, self._placed]
        args = [
            message_id,
            sent.options["redis_message_id"],
            job_id,
            self._key_turns,
            f"{self.prefix}job:",
            # Past every queued job's expiry (a TTL after its submission).
            2 * self.ttl_ms,
        ]
        self._script("PLACE", keys, args)

    def _enqueue_or_leave(self, job_id: str, message_id: str) -> bool:
        """Send the message of a job queued by a change already made; False when Redis
        failed: the reconciler gives the job a new message (no rmid)."""
        try:
            self._enqueue(job_id, message_id)
        except (redis.RedisError, dramatiq.errors.BrokerConnectionError) as exc:
            log.warning("job %s queued, its message left to the reconciler: %s", job_id, exc)
            return False
        return True

    def _ack(self, job_id: str) -> None:
        proxy = self._inflight.pop(job_id, None)
        if proxy is not None:
            with self._consumer_lock:
                self._consumer.ack(proxy)

    def _fetch(self) -> MessageProxy | None:
        with self._consumer_lock:
            # One message more than this process holds: never take work it has no room for.
            self._consumer.prefetch = self._consumer.outstanding_message_count + 1
            proxy: MessageProxy | None = next(self._consumer)
            return proxy

    def _drop(self, proxy: MessageProxy) -> None:
        with self._consumer_lock:
            self._consumer.ack(proxy)
        # A message of a job that will not run here (gone, stale, final, busy) holds no
        # place among the turns any more (if Redis fails now, PLACE drops it when met).
        with contextlib.suppress(redis.RedisError):
            self.redis.zrem(self._turns, proxy.options.get("redis_message_id", ""))

    # --- jobs --------------------------------------------------------------------------

    def _read(self, job_id: str) -> JobRecord | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._job(job_id))
        pipe.lrange(f"{self._job(job_id)}:wh", 0, -1)
        fields, webhooks = pipe.execute()
        return record_from(fields, webhooks) if fields else None

    @unavailable
    async def create(self, record: JobRecord, room: Room) -> tuple[JobRecord, bool]:
        def create() -> tuple[JobRecord, bool]:
            message_id = str(uuid.uuid4())
            keys = [
                self._job(record.id),
                self._idem(record),
                self._queued,
                self._running,
                self._open(record.tenant),
                self._waiting,
            ]
            existing = self._script(
                "CREATE",
                keys,
                [
                    2 * self.ttl_ms,
                    repr(record.created_at),
                    f"{self.prefix}job:",
                    record.id,
                    room.limit,
                    room.per_tenant,
                    *flat(job_fields(record, message_id)),
                ],
            )
            no_room(existing)
            if existing:
                found = self._read(existing)
                if found is None:  # deleted between the two calls: nothing was written
                    raise JobsUnavailable("The job changed meanwhile; retry.", retry_after=1)
                return found, False
            try:
                self._enqueue(record.id, message_id)
            except BaseException:
                # Not accepted: the client hears an error, so the job must not run later.
                self._delete(record.id)
                raise
            return record, True

        return await self._run(create)

    @unavailable
    async def get(self, job_id: str) -> JobRecord | None:
        return await self._run(lambda: self._read(job_id))

    @unavailable
    async def find_idempotent(self, key: str, tenant: str | None, client: str) -> JobRecord | None:
        def find() -> JobRecord | None:
            job_id = self.redis.get(self._idem_key(key, tenant, client))
            return None if job_id is None else self._read(str(job_id))

        return await self._run(find)

    @unavailable
    async def places(self) -> int:
        keys = [self._queued, self._running, self._waiting]
        return int(await self._run(lambda: self._script("PLACES", keys, [f"{self.prefix}job:"])))

    @unavailable
    async def stats(self) -> QueueStats:
        def stats() -> QueueStats:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(self._queued)
            pipe.zcard(self._running)
            pipe.zrange(self._queued, 0, 0, withscores=True)
            queued, running, oldest = pipe.execute()
            return QueueStats(int(queued), int(running), oldest[0][1] if oldest else None)

        return await self._run(stats)

    @unavailable
    async def tenant_unfinished(self, tenant: str) -> int:
        keys = [self._open(tenant)]

        def count() -> int:
            args = [f"{self.prefix}job:", repr(time.time())]
            return int(self._script("TENANT_UNFINISHED", keys, args))

        return await self._run(count)

    @unavailable
    async def heartbeat(self) -> None:
        """Tell dramatiq this process lives: its running jobs are not redelivered."""
        await self._run(lambda: self.broker.do_qsize(QUEUE))

    @unavailable
    async def claim(self, owner: str, now: float) -> JobRecord | None:
        def claim() -> JobRecord | None:
            # Stale or duplicate messages are acked and skipped; a few per call at most.
            for _ in range(16):
                proxy = self._unclaimed.pop(0) if self._unclaimed else self._fetch()
                if proxy is None:
                    return None
                job_id = str(proxy.args[0])
                try:
                    outcome = self._script(
                        "CLAIM",
                        [
                            self._job(job_id),
                            self._queued,
                            self._running,
                            self._heartbeats,
                            self._turns,
                            self._clock,
                        ],
                        [
                            proxy.message_id,
                            owner,
                            self.broker_id,
                            repr(now),
                            self.heartbeat_timeout_ms,
                            int(time.time() * 1000),
                            job_id,
                            self._key_turns,
                        ],
                    )
                except BaseException:
                    self._unclaimed.append(proxy)
                    raise
                if outcome != "ok":
                    self._drop(proxy)
                    continue
                self._inflight[job_id] = proxy
                try:
                    return self._read(job_id)
                except BaseException:
                    # Claimed, but Redis went before the record could be read: this runner
                    # will not run it, so it must not look in flight here, or the repair
                    # (reconcile: a live runner's running job it lost track of) would never
                    # queue it again, and dramatiq never redelivers a live runner's message.
                    self._inflight.pop(job_id, None)
                    raise
            return None

        return await self._run(claim)

    @unavailable
    async def requeue(
        self, job_id: str, owner: str, error: JobError, *, keep_turn: bool = False
    ) -> bool:
        def requeue() -> bool:
            message_id = str(uuid.uuid4())
            turn = "keep" if keep_turn else "next"
            moved = bool(
                self._script(
                    "REQUEUE",
                    [self._job(job_id), self._queued, self._running],
                    [owner, error.code, error.message, message_id, job_id, turn],
                )
            )
            if moved:
                self._enqueue(job_id, message_id)
            self._ack(job_id)
            return moved

        return await self._run(requeue)

    @unavailable
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
        extra: list[str] = []
        if error is not None:
            extra += ["error_code", error.code, "error_message", error.message]
        if result_key is not None:
            extra += ["result_key", result_key]
        if content_type is not None:
            extra += ["content_type", content_type]

        def finish() -> bool:
            message_id = str(uuid.uuid4())
            done = self._script(
                "FINISH",
                [self._job(job_id), self._running, self._finished, self._queued, self._waiting],
                [owner, status.value, repr(now), job_id, f"{self.prefix}job:", message_id, *extra],
            )
            # Acked either way: if another runner took the job over, its message is another
            # delivery, and this one must not come back.
            self._ack(job_id)
            if isinstance(done, str):
                # The last segment of a video: the video is queued again, to be stitched.
                self._enqueue_or_leave(done, message_id)
                return True
            return bool(done)

        return await self._run(finish)

    @unavailable
    async def cancel(self, job_id: str, now: float) -> bool:
        # The message stays queued; the runner that receives it finds the job final.
        keys = [self._job(job_id), self._queued, self._finished]
        return bool(await self._run(lambda: self._script("CANCEL", keys, [repr(now), job_id])))

    def _delete(self, job_id: str) -> None:
        """The job's hash, webhook list and index entries, and its segments'."""
        keys = [self._queued, self._running, self._finished, self._expired, self._waiting]
        self._script("DELETE", keys, [f"{self.prefix}job:", job_id])

    @unavailable
    async def progress(self, job_id: str, owner: str, done: int, total: int) -> None:
        args = [owner, done, total]
        await self._run(lambda: self._script("PROGRESS", [self._job(job_id)], args))

    @unavailable
    async def delete(self, job_id: str) -> None:
        await self._run(lambda: self._delete(job_id))

    @unavailable
    async def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None:
        keys = [self._job(job_id), f"{self._job(job_id)}:wh"]
        await self._run(lambda: self._script("ADD_WEBHOOK_ATTEMPT", keys, [json.dumps(attempt)]))

    @unavailable
    async def recover(self, orphaned: Callable[[str], bool], started_before: float) -> int:
        """dramatiq redelivers a dead runner's messages; this repairs what it cannot see:
        jobs whose message was lost (a Redis without persistence restarted, a process
        killed between writing a record and queueing its message) and running jobs of a
        process that lost track of them (Redis was down when they ended). ``orphaned``
        and ``started_before`` are the embedded store's tests; unused here."""
        return await self._run(lambda: reconcile(self))

    @unavailable
    async def expire(self, before: float) -> list[JobRecord]:
        def expire() -> list[JobRecord]:
            ids = self._script(
                "EXPIRE",
                [self._finished, self._queued, self._expired, self._waiting],
                [repr(before), SCAN_LIMIT, f"{self.prefix}job:"],
            )
            records = [self._read(job_id) for job_id in ids]
            return [r for r in records if r is not None]

        return await self._run(expire)

    @unavailable
    async def purge(self, before: float) -> int:
        def purge() -> int:
            ids = [
                str(i)
                for i in self.redis.zrangebyscore(
                    self._expired, "-inf", f"({before!r}", 0, SCAN_LIMIT
                )
            ]
            for job_id in ids:
                self._delete(job_id)
            return len(ids)

        return await self._run(purge)

    @unavailable
    async def split(
        self, job_id: str, owner: str, segments: list[JobRecord], frames_total: int
    ) -> bool:
        def split() -> bool:
            messages = [str(uuid.uuid4()) for _ in segments]
            fields = [job_fields(r, m) for r, m in zip(segments, messages, strict=True)]
            keys = [
                self._job(job_id),
                self._queued,
                self._running,
                self._finished,
                self._expired,
                self._waiting,
            ]
            args = [
                owner,
                frames_total,
                job_id,
                len(segments),
                f"{self.prefix}job:",
                json.dumps(fields),
            ]
            done = bool(self._script("SPLIT", keys, args))
            # Acked either way, as by finish: the video's message is done with (a waiting
            # job's, delivered again, is dropped as final).
            self._ack(job_id)
            if done:
                # In order, each at its key's next turn: after the jobs the key queued
                # before this cut, taking turns with other keys' jobs, on any node.
                # Redis failing: the rest are the reconciler's too, without waiting on each.
                for record, message_id in zip(segments, messages, strict=True):
                    if not self._enqueue_or_leave(record.id, message_id):
                        break
            return done

        return await self._run(split)

    @unavailable
    async def segments_of(self, job_id: str) -> list[JobRecord]:
        def read() -> list[JobRecord]:
            count = int(self.redis.hget(self._job(job_id), "segments") or 0)
            pipe = self.redis.pipeline(transaction=False)
            for index in range(count):
                key = self._job(segment_id(job_id, index))
                pipe.hgetall(key)
                pipe.lrange(f"{key}:wh", 0, -1)
            found = pipe.execute()
            pairs = zip(found[0::2], found[1::2], strict=True)
            return [record_from(fields, webhooks) for fields, webhooks in pairs if fields]

        return await self._run(read)

    async def close(self) -> None:
        def close() -> None:
            # Messages of jobs still running stay unacked: dramatiq hands them to another
            # runner once this process's heartbeat stops (the runner requeued what it could).
            self.broker.close()
            self.redis.close()

        await self._run(close)
