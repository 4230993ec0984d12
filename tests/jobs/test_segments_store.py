"""A video cut into segments, as both job stores keep it: the parent waits while its
segments run as jobs of their own (on any node), and the last segment to end queues the
parent again, to be stitched."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis

from bgsvc.jobs import segments as cut_video
from bgsvc.jobs.base import JobStore, NoRoom, Room
from bgsvc.jobs.model import BatchItem, BatchRecord, JobError, JobRecord, JobStatus, segment_id
from bgsvc.jobs.queue import Backends, JobQueue
from bgsvc.jobs.redis.codec import record_from
from bgsvc.jobs.redis.reconcile import reconcile
from bgsvc.jobs.redis.store import RedisJobStore
from bgsvc.jobs.sqlite.store import SqliteJobStore
from bgsvc.storage.filesystem import FilesystemStore
from tests.jobs.backends import Backend
from tests.jobs.test_store_migration import old_database
from tests.redis_server import RedisServer, redis_server  # noqa: F401

ROOM = Room(limit=100, per_tenant=100)


def job(job_id: str, created_at: float, tenant: str | None = None) -> JobRecord:
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        created_at=created_at,
        options={"video": True},
        input_key=f"jobs/{job_id}/original",
        fingerprint="f",
        client="10.0.0.1",
        tenant=tenant,
        credits=3,
    )


def cut(parent: JobRecord, count: int) -> list[JobRecord]:
    """The segment records a runner hands to split."""
    return [
        JobRecord(
            id=segment_id(parent.id, i),
            status=JobStatus.QUEUED,
            created_at=parent.created_at + i * 1e-6,
            options={"segment": i},
            input_key=f"jobs/{parent.id}/segments/{i}",
            fingerprint="f",
            client=parent.client,
            tenant=parent.tenant,
            parent=parent.id,
        )
        for i in range(count)
    ]


async def running_parent(
    store: JobStore, job_id: str = "job_video", created_at: float | None = None, **kw: str
) -> JobRecord:
    """A video job, created and claimed by runner-1."""
    parent = job(job_id, time.time() - 10 if created_at is None else created_at, **kw)
    await store.create(parent, ROOM)
    claimed = await store.claim("runner-1", time.time())
    assert claimed is not None and claimed.id == job_id
    return parent


async def claim_all(store: JobStore, owner: str) -> list[str]:
    ids: list[str] = []
    while (claimed := await store.claim(owner, time.time())) is not None:
        ids.append(claimed.id)
    return ids


async def status_of(store: JobStore, job_id: str) -> JobStatus | None:
    record = await store.get(job_id)
    return None if record is None else record.status


def test_split_by_the_owner_queues_the_segments_and_the_parent_waits(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        parent = await running_parent(store)
        assert await store.split(parent.id, "runner-1", cut(parent, 3), frames_total=90)

        waiting = await store.get(parent.id)
        assert waiting is not None
        assert waiting.status is JobStatus.WAITING and waiting.owner is None
        assert waiting.segments == 3 and waiting.parent is None
        assert (waiting.frames_done, waiting.frames_total) == (0, 90)
        assert waiting.public()["status"] == "running"

        segments = await store.segments_of(parent.id)
        assert [s.id for s in segments] == [segment_id(parent.id, i) for i in range(3)]
        assert all(s.status is JobStatus.QUEUED and s.parent == parent.id for s in segments)
        assert [s.options for s in segments] == [{"segment": i} for i in range(3)]
        assert all(s.segments == 0 and s.attempts == 0 for s in segments)

        # A waiting parent is neither queued nor running; its segments are queued jobs.
        stats = await store.stats()
        assert (stats.queued, stats.running) == (3, 0)
        assert stats.oldest_queued_at == pytest.approx(parent.created_at)
        # No recovery touches it (no owner, not running); segments have their messages.
        if isinstance(store, RedisJobStore):
            assert reconcile(store, older_than_s=0) == 0
        else:
            assert await store.recover(lambda owner: True, time.time() + 1) == 0
        # Neither claimable nor cancelable.
        assert await claim_all(store, "runner-2") == [s.id for s in segments]
        assert not await store.cancel(parent.id, time.time())
        assert await status_of(store, parent.id) is JobStatus.WAITING

    backend.play(scenario)


def test_split_by_another_owner_or_of_a_job_not_running_changes_nothing(
    backend: Backend,
) -> None:
    async def scenario() -> None:
        store = backend.open()
        parent = await running_parent(store)
        assert not await store.split(parent.id, "runner-2", cut(parent, 2), frames_total=60)
        record = await store.get(parent.id)
        assert record is not None
        assert (record.status, record.owner, record.segments) == (JobStatus.RUNNING, "runner-1", 0)
        assert record.frames_total is None
        assert await store.segments_of(parent.id) == []
        assert await store.get(segment_id(parent.id, 0)) is None
        assert (await store.stats()).queued == 0

        # Queued (not running), and finished: refused too.
        queued = job("job_queued", time.time())
        await store.create(queued, ROOM)
        assert not await store.split(queued.id, "runner-1", cut(queued, 2), frames_total=60)
        assert await status_of(store, queued.id) is JobStatus.QUEUED
        assert await store.finish(parent.id, "runner-1", JobStatus.SUCCEEDED, time.time())
        assert not await store.split(parent.id, "runner-1", cut(parent, 2), frames_total=60)
        assert await status_of(store, parent.id) is JobStatus.SUCCEEDED
        assert await store.get(segment_id(queued.id, 0)) is None
        assert await store.get(segment_id(parent.id, 0)) is None
        assert await claim_all(store, "runner-2") == [queued.id]

    backend.play(scenario)


def test_a_cut_videos_segments_take_their_keys_next_turns_in_order(backend: Backend) -> None:
    # After the key's jobs queued before the cut, before those queued after it; another
    # key's jobs take turns with the segments rather than wait for the whole video.
    async def scenario() -> None:
        store = backend.open()
        t0 = time.time() - 10
        parent = await running_parent(store, created_at=t0, tenant="a")
        # Submitted while the parent ran (before its cut), and after the cut.
        await store.create(job("job_later", t0 + 1, tenant="a"), ROOM)
        assert await store.split(parent.id, "runner-1", cut(parent, 3), frames_total=90)
        await store.create(job("job_latest", t0 + 2, tenant="a"), ROOM)
        await store.create(job("job_b1", t0 + 3, tenant="b"), ROOM)
        await store.create(job("job_b2", t0 + 4, tenant="b"), ROOM)
        assert await claim_all(store, "runner-2") == [
            "job_later",
            "job_b1",
            segment_id(parent.id, 0),
            "job_b2",
            segment_id(parent.id, 1),
            segment_id(parent.id, 2),
            "job_latest",
        ]

    backend.play(scenario)


@pytest.mark.parametrize("last", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_the_last_segment_to_end_queues_the_parent_again(backend: Backend, last: JobStatus) -> None:
    async def scenario() -> None:
        store = backend.open()
        parent = await running_parent(store)
        assert await store.split(parent.id, "runner-1", cut(parent, 3), frames_total=90)
        s0, s1, s2 = (segment_id(parent.id, i) for i in range(3))
        assert await claim_all(store, "runner-2") == [s0, s1, s2]
        # Not the last: one done, one failed, the parent waits on the third.
        now = time.time()
        assert await store.finish(s2, "runner-2", JobStatus.SUCCEEDED, now, result_key="r2")
        error = JobError("inference_failed", "boom")
        assert await store.finish(s0, "runner-2", JobStatus.FAILED, now, error=error)
        assert await status_of(store, parent.id) is JobStatus.WAITING
        assert await store.claim("runner-3", time.time()) is None

        failed = error if last is JobStatus.FAILED else None
        assert await store.finish(s1, "runner-2", last, time.time(), error=failed)
        queued = await store.get(parent.id)
        assert queued is not None and queued.status is JobStatus.QUEUED
        assert queued.owner is None
        stats = await store.stats()
        assert (stats.queued, stats.running) == (1, 0)

        stitch = await store.claim("runner-3", time.time())
        assert stitch is not None and stitch.id == parent.id
        assert stitch.status is JobStatus.RUNNING and stitch.owner == "runner-3"
        # The split's attempt is not counted against the stitch's.
        assert stitch.attempts == 1 and stitch.segments == 3 and stitch.frames_total == 90
        ended = await store.segments_of(parent.id)
        assert [s.status for s in ended] == [JobStatus.FAILED, last, JobStatus.SUCCEEDED]
        assert ended[2].result_key == "r2"

    backend.play(scenario)


def test_a_video_queued_again_to_be_stitched_cannot_be_canceled(backend: Backend) -> None:
    # Its frames went through the model: a cancel here (a batch's delete does one for
    # every queued item) would give back every credit the video held.
    async def scenario() -> None:
        store = backend.open()
        parent = await running_parent(store)
        assert await store.split(parent.id, "runner-1", cut(parent, 2), frames_total=60)
        for segment in await claim_all(store, "runner-2"):
            assert await store.finish(segment, "runner-2", JobStatus.SUCCEEDED, time.time())
        assert await status_of(store, parent.id) is JobStatus.QUEUED

        assert not await store.cancel(parent.id, time.time())
        stitch = await store.claim("runner-3", time.time())
        assert stitch is not None and stitch.id == parent.id
        # A plain queued job still is.
        plain = job("job_plain", time.time())
        await store.create(plain, ROOM)
        assert await store.cancel(plain.id, time.time())
        assert await status_of(store, plain.id) is JobStatus.CANCELED

    backend.play(scenario)


def test_finishing_the_last_segment_twice_queues_the_parent_once(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        parent = await running_parent(store)
        assert await store.split(parent.id, "runner-1", cut(parent, 2), frames_total=60)
        s0, s1 = segment_id(parent.id, 0), segment_id(parent.id, 1)
        assert await claim_all(store, "runner-2") == [s0, s1]
        assert await store.finish(s0, "runner-2", JobStatus.SUCCEEDED, time.time())
        now = time.time()
        assert await store.finish(s1, "runner-2", JobStatus.SUCCEEDED, now, result_key="r1")
        # The retry (its reply was lost): Redis answers it as done; nothing moves again.
        retried = await store.finish(s1, "runner-2", JobStatus.SUCCEEDED, now, result_key="r1")
        assert retried is (backend.kind == "redis")
        assert (await store.stats()).queued == 1
        assert await claim_all(store, "runner-3") == [parent.id]
        # Again while the parent is being stitched: it stays running, its runner's.
        await store.finish(s1, "runner-2", JobStatus.SUCCEEDED, now, result_key="r1")
        stitching = await store.get(parent.id)
        assert stitching is not None
        assert (stitching.status, stitching.owner) == (JobStatus.RUNNING, "runner-3")
        assert stitching.attempts == 1
        assert await store.claim("runner-4", time.time()) is None
        assert await store.finish(parent.id, "runner-3", JobStatus.SUCCEEDED, time.time())
        assert await status_of(store, parent.id) is JobStatus.SUCCEEDED

    backend.play(scenario)


def test_a_segment_whose_runner_died_is_claimed_again_while_the_parent_waits(
    backend: Backend,
) -> None:
    async def scenario() -> None:
        node = backend.open(heartbeat_timeout_s=1.0)
        dying = backend.open(heartbeat_timeout_s=1.0)
        parent = await running_parent(node)
        assert await node.split(parent.id, "runner-1", cut(parent, 2), frames_total=60)
        s0, s1 = segment_id(parent.id, 0), segment_id(parent.id, 1)
        taken = await dying.claim("runner-dead", time.time())
        assert taken is not None and taken.id == s0
        kept = await node.claim("runner-1", time.time())
        assert kept is not None and kept.id == s1

        # runner-dead's process is gone: the embedded store's recovery finds its pid
        # dead; the fleet's dramatiq hands its message on once its heartbeat is old.
        if backend.kind == "embedded":
            assert await node.recover(lambda owner: owner == "runner-dead", 0.0) == 1
        else:
            await asyncio.sleep(1.5)
            await node.recover(lambda owner: True, time.time())
        assert await status_of(node, parent.id) is JobStatus.WAITING

        again = await node.claim("runner-1", time.time())
        assert again is not None and again.id == s0
        assert again.attempts == 2 and again.owner == "runner-1"
        # The dead runner's late finish is refused; the parent waits on both.
        assert not await dying.finish(s0, "runner-dead", JobStatus.SUCCEEDED, time.time())
        assert await status_of(node, parent.id) is JobStatus.WAITING
        assert await node.finish(s0, "runner-1", JobStatus.SUCCEEDED, time.time())
        assert await node.finish(s1, "runner-1", JobStatus.SUCCEEDED, time.time())
        assert await claim_all(node, "runner-1") == [parent.id]

    backend.play(scenario)


def test_a_tenants_unfinished_jobs_count_the_waiting_parent_once_and_no_segment(
    backend: Backend,
) -> None:
    async def scenario() -> None:
        store = backend.open()
        parent = await running_parent(store, tenant="acme")
        assert await store.split(parent.id, "runner-1", cut(parent, 3), frames_total=90)
        assert await store.tenant_unfinished("acme") == 1
        # The tenant's room counts the same way: one more job fits a share of two.
        room = Room(limit=100, per_tenant=2)
        await store.create(job("job_other", time.time(), tenant="acme"), room)
        assert await store.tenant_unfinished("acme") == 2
        with pytest.raises(NoRoom) as full:
            await store.create(job("job_third", time.time(), tenant="acme"), room)
        assert (full.value.scope, full.value.unfinished) == ("tenant", 2)

        segments = [segment_id(parent.id, i) for i in range(3)]
        for segment in segments:
            claimed = await store.claim("runner-2", time.time())
            assert claimed is not None and claimed.id == segment
            assert await store.tenant_unfinished("acme") == 2
        for segment in segments:
            assert await store.finish(segment, "runner-2", JobStatus.SUCCEEDED, time.time())
        assert await store.tenant_unfinished("acme") == 2
        assert await claim_all(store, "runner-3") == [parent.id, "job_other"]
        assert await store.finish(parent.id, "runner-3", JobStatus.SUCCEEDED, time.time())
        assert await store.tenant_unfinished("acme") == 1

    backend.play(scenario)


def test_a_video_cut_into_segments_takes_one_place_of_the_queue_room(backend: Backend) -> None:
    # Segments are queued with no room checked: were each one a place, one key's few long
    # videos would fill the whole queue (every other key 429) past its own share.
    async def scenario() -> None:
        store = backend.open()
        parent = await running_parent(store, tenant="acme")
        assert await store.split(parent.id, "runner-1", cut(parent, 3), frames_total=90)
        # What the queue's early check reads says the same (the work counts every segment).
        assert (await store.places(), (await store.stats()).unfinished) == (1, 3)
        room = Room(limit=2, per_tenant=2)
        await store.create(job("job_other", time.time(), tenant="zeta"), room)
        assert await store.places() == 2
        with pytest.raises(NoRoom) as full:
            await store.create(job("job_third", time.time(), tenant="zeta"), room)
        assert (full.value.scope, full.value.unfinished) == ("queue", 2)
        # A segment running counts as its video, as one queued does.
        assert (await store.claim("runner-2", time.time())) is not None
        assert await store.places() == 2
        with pytest.raises(NoRoom):
            await store.create(job("job_third", time.time(), tenant="zeta"), room)

    backend.play(scenario)


def test_deleting_the_parent_deletes_its_segments(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        parent = await running_parent(store)
        assert await store.split(parent.id, "runner-1", cut(parent, 3), frames_total=90)
        other = job("job_other", time.time())
        await store.create(other, ROOM)
        s0, s1, s2 = (segment_id(parent.id, i) for i in range(3))
        assert await store.claim("runner-2", time.time()) is not None
        assert await store.claim("runner-2", time.time()) is not None
        assert await store.finish(s0, "runner-2", JobStatus.SUCCEEDED, time.time())
        await store.add_webhook_attempt(s1, {"status": 200})

        await store.delete(parent.id)
        for job_id in (parent.id, s0, s1, s2):
            assert await store.get(job_id) is None
        assert await store.segments_of(parent.id) == []
        stats = await store.stats()
        assert (stats.queued, stats.running) == (1, 0)
        assert await store.get(other.id) is not None
        if isinstance(store, RedisJobStore):
            left = {str(k) for k in store.redis.keys(f"{store.prefix}job:*")}
            assert left == {store._job(other.id)}
            for index in ("queued", "running", "finished", "expired", "waiting"):
                members = store.redis.zrange(f"{store.prefix}{index}", 0, -1)
                assert set(members) <= {other.id}, index
        # The runner of s1 ends it later: nothing to end, nothing queued.
        assert not await store.finish(s1, "runner-2", JobStatus.SUCCEEDED, time.time())
        assert await claim_all(store, "runner-3") == [other.id]

    backend.play(scenario)


def test_an_old_waiting_parent_expires_with_its_queued_segments(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        now = time.time()
        old, young = job("job_old", now - 100), job("job_young", now - 10)
        for record in (old, young):
            await store.create(record, ROOM)
        assert await claim_all(store, "runner-1") == [old.id, young.id]
        assert await store.split(old.id, "runner-1", cut(old, 2), frames_total=60)
        assert await claim_all(store, "runner-2") == [segment_id(old.id, i) for i in range(2)]
        for i in range(2):
            await store.finish(segment_id(old.id, i), "runner-2", JobStatus.SUCCEEDED, now - 90)
        # Queued again, then cut again: the second cut replaces the first's segments.
        assert await claim_all(store, "runner-1") == [old.id]
        assert await store.split(old.id, "runner-1", cut(old, 1), frames_total=30)
        assert [s.status for s in await store.segments_of(old.id)] == [JobStatus.QUEUED]
        assert await store.get(segment_id(old.id, 1)) is None
        assert await store.split(young.id, "runner-1", cut(young, 1), frames_total=30)

        expired = await store.expire(now - 50)
        assert {r.id for r in expired} == {old.id, segment_id(old.id, 0)}
        assert all(r.status is JobStatus.EXPIRED for r in expired)
        assert await status_of(store, old.id) is JobStatus.EXPIRED
        assert await status_of(store, young.id) is JobStatus.WAITING
        assert await store.expire(now - 50) == []
        assert await claim_all(store, "runner-2") == [segment_id(young.id, 0)]

    backend.play(scenario)


def test_a_batch_with_a_waiting_video_is_not_complete(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        video = job("job_video", time.time() - 10)
        batch = BatchRecord("batch_1", video.created_at, [BatchItem("a.mp4", video.id)])
        video.batch_id = batch.id
        await store.create_batch(batch, [video], ROOM)
        assert await claim_all(store, "runner-1") == [video.id]
        assert await store.split(video.id, "runner-1", cut(video, 1), frames_total=30)
        assert await store.complete_batch(batch.id, time.time()) is None
        assert await claim_all(store, "runner-2") == [segment_id(video.id, 0)]
        assert await store.finish(segment_id(video.id, 0), "runner-2", JobStatus.SUCCEEDED, 1.0)
        assert await claim_all(store, "runner-1") == [video.id]
        assert await store.finish(video.id, "runner-1", JobStatus.SUCCEEDED, time.time())
        assert await store.complete_batch(batch.id, time.time()) is not None

    backend.play(scenario)


@pytest.mark.redis
def test_another_node_claims_the_segments_a_node_cut(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    def node() -> RedisJobStore:
        return RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)

    cutter, other = node(), node()

    async def scenario() -> None:
        try:
            parent = await running_parent(cutter)
            assert await cutter.split(parent.id, "runner-1", cut(parent, 3), frames_total=90)
            segments = [segment_id(parent.id, i) for i in range(3)]
            assert await claim_all(other, "runner-b") == segments
            for segment in segments:
                assert await other.finish(segment, "runner-b", JobStatus.SUCCEEDED, time.time())
            # The parent's message is any node's too.
            assert await claim_all(other, "runner-b") == [parent.id]
        finally:
            await cutter.close()
            await other.close()

    asyncio.run(scenario())


def test_records_from_before_segments_have_no_parent_and_none(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old_database(path)

    async def scenario() -> None:
        store = SqliteJobStore(path)
        try:
            old = await store.get("job_old")
            assert old is not None and (old.parent, old.segments) == (None, 0)
            assert await store.tenant_unfinished("nobody") == 0
        finally:
            await store.close()

    asyncio.run(scenario())
    fields = {
        "id": "job_old",
        "status": "queued",
        "created_at": "1.0",
        "options": "{}",
        "input_key": "jobs/job_old/original",
        "fingerprint": "f",
    }
    record = record_from(fields, [])
    assert (record.parent, record.segments) == (None, 0)


@pytest.mark.redis
def test_lost_messages_of_segments_and_of_the_parent_are_sent_again_by_the_reconciler(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    # A Redis without persistence restarted, or a node killed after the script and before
    # the messages: the records say queued, and the reconciler gives them new messages.
    store = RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)

    def lose_messages() -> None:
        store.redis.delete(store._queue_list, store._messages)

    async def scenario() -> None:
        try:
            parent = await running_parent(store)
            assert await store.split(parent.id, "runner-1", cut(parent, 2), frames_total=60)
            lose_messages()
            assert await store.claim("runner-1", time.time()) is None
            assert reconcile(store, older_than_s=0) == 2
            segments = [segment_id(parent.id, i) for i in range(2)]
            assert sorted(await claim_all(store, "runner-1")) == segments
            for segment in segments:
                assert await store.finish(segment, "runner-1", JobStatus.SUCCEEDED, time.time())
            lose_messages()
            assert await store.claim("runner-1", time.time()) is None
            store.redis.delete(f"{store.prefix}reconcile")  # the scan's lock, held 5 s
            assert reconcile(store, older_than_s=0) == 1
            assert await claim_all(store, "runner-1") == [parent.id]
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_split_whose_messages_cannot_be_sent_is_done_and_repaired(
    redis_server: RedisServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The script ran: the video waits and its segments are queued, whatever happens to
    # their messages after it; the split is not to be reported failed (nor retried).
    store = RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)
    sent: list[str] = []

    def down(message: object, **_: object) -> object:
        sent.append(str(message))
        raise redis.ConnectionError("Redis went away")

    async def scenario() -> None:
        try:
            parent = await running_parent(store)
            with monkeypatch.context() as patch:
                patch.setattr(store.broker, "enqueue", down)
                assert await store.split(parent.id, "runner-1", cut(parent, 3), frames_total=90)
            assert len(sent) == 1  # the rest left at the first failure
            assert await status_of(store, parent.id) is JobStatus.WAITING
            assert await store.claim("runner-1", time.time()) is None
            assert reconcile(store, older_than_s=0) == 3
            segments = [segment_id(parent.id, i) for i in range(3)]
            assert sorted(await claim_all(store, "runner-1")) == segments
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_cut_videos_segments_take_no_room_from_another_tenants_submission(
    tmp_path: Path,
) -> None:
    # The queue's early check (before an upload is written) must count as the store does:
    # a video cut into 11 segments is one place of 10, not 11 of them.
    async def scenario() -> None:
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        queue = JobQueue(
            lambda: Backends(store, FilesystemStore(tmp_path / "results", 3600)),
            lambda: True,
            queue_limit=10,
            queue_limit_per_key=5,
            concurrency=1,
            keep_originals=False,
        )
        video, _ = await queue.submit(
            b"\x1aE\xdf\xa3 a video",
            {},
            client="",
            idempotency_key=None,
            callback_url=None,
            tenant="a",
        )
        parent = await store.claim("runner-1", time.time())
        assert parent is not None and parent.id == video.id
        cuts: list[tuple[int, int | None]] = [(i * 13, (i + 1) * 13) for i in range(10)]
        cuts.append((130, None))
        assert await store.split(video.id, "runner-1", cut_video.segment_records(parent, cuts), 140)
        _, created = await queue.submit(
            b"a photo", {}, client="", idempotency_key=None, callback_url=None, tenant="b"
        )
        assert created
        await store.close()

    asyncio.run(scenario())


def test_a_webhook_attempt_recorded_after_its_record_was_deleted_leaves_nothing(
    backend: Backend,
) -> None:
    # A delivery still retrying when its job or batch is deleted (up to 18 minutes of
    # retries) wrote its attempt to Redis all the same: a list of no record, which
    # nothing would ever expire, one a deleted job.
    async def scenario() -> None:
        store = backend.open()
        kept, gone = job("job_kept", time.time()), job("job_gone", time.time())
        batch = BatchRecord("batch_gone", gone.created_at, [BatchItem("a.png", gone.id)])
        await store.create(kept, ROOM)
        await store.create_batch(batch, [gone], ROOM)
        await store.delete_batch(batch.id)
        await store.delete(gone.id)
        await store.add_webhook_attempt(gone.id, {"status": 500})
        await store.add_batch_webhook_attempt(batch.id, {"status": 500})
        await store.add_webhook_attempt(kept.id, {"status": 200})
        assert await store.get(gone.id) is None and await store.get_batch(batch.id) is None
        found = await store.get(kept.id)
        assert found is not None and found.webhook_attempts == [{"status": 200}]
        if isinstance(store, RedisJobStore):
            left = {str(k) for k in store.redis.keys("*") if "gone" in str(k)}
            assert left == set()

    asyncio.run(scenario())
