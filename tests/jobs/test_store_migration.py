"""Records written before jobs had owners: the stores open them, and no key sees them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from bgsvc.errors import JobNotFound
from bgsvc.jobs.base import Room
from bgsvc.jobs.model import JobRecord, JobStatus
from bgsvc.jobs.queue import Backends, JobQueue
from bgsvc.jobs.sqlite.store import SqliteJobStore
from bgsvc.storage.filesystem import FilesystemStore

ROOM = Room(limit=100, per_tenant=10)

# The tables as the release before tenants made them (with its per-address unique index).
OLD_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL, started_at REAL,
    finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0, error_code TEXT,
    error_message TEXT, options TEXT NOT NULL, input_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL, result_key TEXT, content_type TEXT, client TEXT NOT NULL,
    idempotency_key TEXT, callback_url TEXT, webhook_attempts TEXT NOT NULL DEFAULT '[]',
    owner TEXT, batch_id TEXT
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (client, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE batches (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, client TEXT NOT NULL, callback_url TEXT,
    items TEXT NOT NULL, completed_at REAL, webhook_attempts TEXT NOT NULL DEFAULT '[]'
);
"""


def old_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO jobs (id, status, created_at, options, input_key, fingerprint, client, "
        "idempotency_key) VALUES ('job_old', 'queued', 1.0, ?, 'jobs/job_old/original', 'f', "
        "'10.0.0.1', 'k-1')",
        (json.dumps({}),),
    )
    db.execute(
        "INSERT INTO batches (id, created_at, client, items) VALUES ('batch_old', 1.0, "
        "'10.0.0.1', ?)",
        (json.dumps([{"name": "a.png", "job_id": "job_old"}]),),
    )
    db.commit()
    db.close()


def record(job_id: str, tenant: str | None, client: str = "10.0.0.1") -> JobRecord:
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        created_at=2.0,
        options={},
        input_key=f"jobs/{job_id}/original",
        fingerprint="f",
        client=client,
        idempotency_key="k-1",
        tenant=tenant,
    )


def test_an_old_sqlite_database_gains_owners_and_per_tenant_idempotency(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    old_database(path)

    async def scenario() -> None:
        store = SqliteJobStore(path)
        try:
            old = await store.get("job_old")
            assert old is not None and old.tenant is None and old.credits == 0
            batch = await store.get_batch("batch_old")
            assert batch is not None and batch.tenant is None
            # The same Idempotency-Key from the same address: one job per tenant, and the
            # old per-address job stays the one a keyless client finds.
            for tenant in ("a", "b"):
                created, fresh = await store.create(record(f"job_{tenant}", tenant), ROOM)
                assert fresh and created.tenant == tenant
            again, fresh = await store.create(record("job_a2", "a"), ROOM)
            assert not fresh and again.id == "job_a"
            keyless, fresh = await store.create(record("job_new", None), ROOM)
            assert not fresh and keyless.id == "job_old"
            assert await store.tenant_unfinished("a") == 1
        finally:
            await store.close()
        # Opening it again (a restart, or a second worker) migrates nothing twice.
        await SqliteJobStore(path).close()

    asyncio.run(scenario())


def test_a_job_without_an_owner_is_seen_by_no_key(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old_database(path)

    async def scenario() -> None:
        queue = JobQueue(
            lambda: Backends(SqliteJobStore(path), FilesystemStore(tmp_path / "results", 3600.0)),
            path.exists,
            queue_limit=10,
            concurrency=1,
            keep_originals=False,
        )
        try:
            assert (await queue.get("job_old")).id == "job_old"  # keys off: as before
            with pytest.raises(JobNotFound):
                await queue.get("job_old", "a")
            with pytest.raises(JobNotFound):
                await queue.cancel_or_delete("job_old", "a")
            assert (await queue.get("job_old")).status is JobStatus.QUEUED
        finally:
            await queue.aclose()

    asyncio.run(scenario())
