"""Keys take turns in the job queue, in both stores: one key's backlog costs a job queued
by another key one of its jobs, not the backlog; a video's segments and a batch's items
take their key's turns like any job."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bgsvc.jobs.base import JobStore, Room
from bgsvc.jobs.model import BatchItem, BatchRecord, JobError, JobRecord, JobStatus
from bgsvc.jobs.redis.store import RedisJobStore
from bgsvc.jobs.sqlite.store import SqliteJobStore
from tests.jobs.backends import Backend
from tests.jobs.test_segments_store import claim_all, cut, job
from tests.jobs.test_store_migration import old_database
from tests.redis_server import RedisServer, redis_server  # noqa: F401

ROOM = Room(limit=1000, per_tenant=1000)


async def queue(store: JobStore, tenant: str | None, count: int, name: str | None = None) -> None:
    prefix = name or tenant or "n"
    for i in range(count):
        await store.create(job(f"job_{prefix}{i}", time.time(), tenant=tenant), ROOM)


async def claim_n(store: JobStore, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        claimed = await store.claim("runner-1", time.time())
        assert claimed is not None
        ids.append(claimed.id)
    return ids


def test_a_job_queued_behind_another_keys_backlog_waits_for_one_of_its_jobs(
    backend: Backend,
) -> None:
    async def scenario() -> None:
        store = backend.open()
        await queue(store, "a", 20)
        await queue(store, "b", 1)
        claimed = await claim_all(store, "runner-1")
        assert claimed == ["job_a0", "job_b0", *(f"job_a{i}" for i in range(1, 20))]

    backend.play(scenario)


def test_keys_take_turns_whatever_their_backlogs(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await queue(store, "a", 4)
        await queue(store, "b", 3)
        assert await claim_n(store, 1) == ["job_a0"]
        # Queued after a turn was taken: the next round, not the first.
        await queue(store, "c", 2)
        assert await claim_all(store, "runner-1") == [
            "job_b0",
            "job_a1",
            "job_b1",
            "job_c0",
            "job_a2",
            "job_b2",
            "job_c1",
            "job_a3",
        ]

    backend.play(scenario)


def test_a_key_back_from_idle_gets_no_turns_for_the_time_it_was_away(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await queue(store, "b", 1, name="b_old")
        await queue(store, "a", 10)
        assert await claim_n(store, 5) == ["job_b_old0", "job_a0", "job_a1", "job_a2", "job_a3"]
        await queue(store, "b", 2)
        assert await claim_all(store, "runner-1") == [
            "job_a4",
            "job_b0",
            "job_a5",
            "job_b1",
            "job_a6",
            "job_a7",
            "job_a8",
            "job_a9",
        ]

    backend.play(scenario)


def test_a_job_put_back_by_a_stopping_process_keeps_its_turn(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await queue(store, "a", 3)
        assert await claim_n(store, 1) == ["job_a0"]
        stopping = JobError("canceled", "shutdown")
        assert await store.requeue("job_a0", "runner-1", stopping, keep_turn=True)
        await queue(store, "b", 1)
        assert await claim_all(store, "runner-1") == ["job_a0", "job_a1", "job_b0", "job_a2"]

    backend.play(scenario)


def test_a_job_retried_after_a_failed_attempt_takes_its_keys_next_turn(
    backend: Backend,
) -> None:
    # A key whose jobs time out on purpose gets one attempt a turn, not three.
    async def scenario() -> None:
        store = backend.open()
        await queue(store, "a", 3)
        assert await claim_n(store, 1) == ["job_a0"]
        timed_out = JobError("job_timeout", "the attempt ran past its time")
        assert await store.requeue("job_a0", "runner-1", timed_out)
        await queue(store, "b", 1)
        assert await claim_all(store, "runner-1") == ["job_a1", "job_b0", "job_a2", "job_a0"]

    backend.play(scenario)


def test_a_keys_canceled_jobs_hold_no_turns(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await queue(store, "a", 20, name="a_gone")
        for i in range(20):
            assert await store.cancel(f"job_a_gone{i}", time.time())
        await queue(store, "b", 20)
        await queue(store, "a", 1)
        claimed = await claim_all(store, "runner-1")
        assert claimed[:3] == ["job_b0", "job_a0", "job_b1"]
        assert len(claimed) == 21

    backend.play(scenario)


def test_a_batchs_items_take_their_keys_turns(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        items = [
            replace(job(f"job_a{i}", time.time(), tenant="a"), batch_id="batch_a") for i in range(5)
        ]
        batch = BatchRecord(
            id="batch_a",
            created_at=time.time(),
            items=[BatchItem(f"{i}.png", item.id) for i, item in enumerate(items)],
            tenant="a",
        )
        await store.create_batch(batch, items, ROOM)
        await queue(store, "b", 2)
        assert await claim_all(store, "runner-1") == [
            "job_a0",
            "job_b0",
            "job_a1",
            "job_b1",
            "job_a2",
            "job_a3",
            "job_a4",
        ]

    backend.play(scenario)


def test_jobs_without_a_key_share_one_line(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await queue(store, None, 3)
        await queue(store, "a", 1)
        assert await claim_all(store, "runner-1") == ["job_n0", "job_a0", "job_n1", "job_n2"]

    backend.play(scenario)


def test_turns_hold_across_the_processes_of_a_node_and_the_nodes_of_a_fleet(
    backend: Backend,
) -> None:
    # Each store a process (SQLite) or a node (Redis): one queue, one clock.
    async def scenario() -> None:
        first, second = backend.open(), backend.open()
        await queue(first, "a", 3)
        assert await claim_n(second, 1) == ["job_a0"]
        await queue(second, "b", 1)
        assert await claim_all(first, "runner-2") == ["job_a1", "job_b0", "job_a2"]

    backend.play(scenario)


def test_a_database_from_before_turns_runs_its_queued_jobs_first(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old_database(path)

    async def scenario() -> None:
        store = SqliteJobStore(path)
        try:
            await queue(store, "a", 2)
            assert await claim_all(store, "runner-1") == ["job_old", "job_a0", "job_a1"]
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.redis
def test_messages_fetched_or_dropped_leave_no_turns_behind(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)
    turns = f"{store.prefix}turns"

    async def scenario() -> None:
        try:
            await queue(store, "a", 3)
            assert await claim_n(store, 1) == ["job_a0"]
            # job_a1's message fetched, not yet claimed: no longer in the list where the
            # retried job_a0 (its turn kept, before job_a1's) is placed.
            proxy = store._fetch()
            assert proxy is not None
            store._unclaimed.append(proxy)
            stopping = JobError("canceled", "shutdown")
            assert await store.requeue("job_a0", "runner-1", stopping, keep_turn=True)
            assert await claim_all(store, "runner-1") == ["job_a1", "job_a0", "job_a2"]
            # Canceled jobs' messages are fetched and dropped, never claimed.
            for round_ in range(5):
                await queue(store, "a", 40, name=f"a{round_}_")
                for i in range(0, 40, 2):
                    assert await store.cancel(f"job_a{round_}_{i}", time.time())
                await queue(store, "b", 1, name=f"b{round_}_")
                claimed = await claim_all(store, "runner-1")
                assert claimed[:3] == [f"job_b{round_}_0", f"job_a{round_}_1", f"job_a{round_}_3"]
                assert len(claimed) == 21
            assert store.redis.llen(store._queue_list) == 0
            assert store.redis.zcard(turns) <= 1
        finally:
            await store.close()

    asyncio.run(scenario())


async def _random_day(store: JobStore, seed: int) -> list[str]:
    """A seeded mix of submissions by three keys and none, claims, cancels, retries,
    shutdowns, cuts and ends; the order the jobs were claimed in, to the last one."""
    rng = random.Random(seed)
    running: dict[str, JobRecord] = {}
    order: list[str] = []

    async def claim() -> bool:
        got = await store.claim("runner-1", time.time())
        if got is not None:
            order.append(got.id)
            running[got.id] = got
        return got is not None

    for step in range(200):
        roll = rng.random()
        if roll < 0.4:
            tenant = rng.choice(["a", "a", "a", "b", "c", None])
            for n in range(rng.choice([1, 1, 1, 5])):
                await store.create(job(f"job_{step}_{n}", time.time(), tenant=tenant), ROOM)
        elif roll < 0.75:
            await claim()
        elif roll < 0.8:
            await store.cancel(f"job_{rng.randrange(step + 1)}_0", time.time())
        elif running:
            job_id = rng.choice(sorted(running))
            record = running.pop(job_id)
            fate = rng.random()
            if fate < 0.2:
                error = JobError("job_timeout", "late")
                assert await store.requeue(job_id, "runner-1", error, keep_turn=fate < 0.05)
            elif fate < 0.3 and record.parent is None and record.segments == 0:
                assert await store.split(job_id, "runner-1", cut(record, rng.randint(2, 4)), 90)
            else:
                assert await store.finish(job_id, "runner-1", JobStatus.SUCCEEDED, time.time())
    while await claim() or running:
        for job_id in sorted(running):
            running.pop(job_id)
            assert await store.finish(job_id, "runner-1", JobStatus.SUCCEEDED, time.time())
    return order


@pytest.mark.redis
@pytest.mark.parametrize("seed", range(4))
def test_both_stores_hand_out_the_same_order_for_the_same_day(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
    seed: int,
) -> None:
    async def scenario() -> tuple[list[str], list[str], int, int]:
        embedded = SqliteJobStore(tmp_path / "jobs.sqlite3")
        shared = RedisJobStore(redis_server.url, ttl_s=3600, heartbeat_timeout_s=5)
        try:
            first = await _random_day(embedded, seed)
            second = await _random_day(shared, seed)
            left = shared.redis.llen(shared._queue_list), shared.redis.zcard(shared._turns)
            return first, second, *left
        finally:
            await embedded.close()
            await shared.close()

    embedded, shared, messages_left, entries_left = asyncio.run(scenario())
    assert len(embedded) > 150
    assert embedded == shared
    assert (messages_left, entries_left) == (0, 0)


@pytest.mark.redis
def test_a_keys_turns_in_redis_hold_its_queued_jobs_and_expire_after_them(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    store = RedisJobStore(redis_server.url, ttl_s=60, heartbeat_timeout_s=5)
    mine = f"{store.prefix}turns:key:a"

    async def scenario() -> None:
        try:
            await queue(store, "b", 11)
            await queue(store, "a", 10, name="a_gone")
            await queue(store, "a", 1, name="a_live")
            for i in range(10):
                assert await store.cancel(f"job_a_gone{i}", time.time())
            # The clock at turn 11 (B's last), A's live job of that turn still queued above
            # its canceled ones: only the clock says those no longer matter.
            assert await claim_n(store, 11) == [f"job_b{i}" for i in range(11)]
            await queue(store, "a", 1)
            assert store.redis.zrange(mine, 0, -1) == ["job_a_live0", "job_a0"]
            # A key that stops submitting leaves nothing behind once its jobs expired.
            assert 0 < store.redis.pttl(mine) <= 2 * 60 * 1000
        finally:
            await store.close()

    asyncio.run(scenario())
