"""Keys take turns in the job queue, in both stores: one key's backlog costs a job queued
by another key one of its jobs, not the backlog; a video's segments and a batch's items
take their key's turns like any job."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bgsvc.jobs.base import JobStore, Room
from bgsvc.jobs.model import BatchItem, BatchRecord, JobError
from bgsvc.jobs.redis.store import RedisJobStore
from bgsvc.jobs.sqlite.store import SqliteJobStore
from tests.jobs.backends import Backend
from tests.jobs.test_segments_store import claim_all, job
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


def test_a_retried_job_keeps_its_turn(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await queue(store, "a", 3)
        assert await claim_n(store, 1) == ["job_a0"]
        error = JobError("internal_error", "the runner's process failed")
        assert await store.requeue("job_a0", "runner-1", error)
        await queue(store, "b", 1)
        assert await claim_all(store, "runner-1") == ["job_a0", "job_a1", "job_b0", "job_a2"]

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
            assert await store.requeue("job_a0", "runner-1", JobError("internal_error", "x"))
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
