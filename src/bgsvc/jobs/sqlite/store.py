"""The embedded job store: one SQLite file (WAL) under the data directory.

Several processes of one node (gunicorn workers) may share the file: WAL lets readers run
beside the one writer, and a claim is an UPDATE ... RETURNING under the write lock (the
queue's turns, bgsvc.jobs.sqlite.turns, move in the same transaction), so each queued job
goes to exactly one of them. Calls run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from bgsvc.jobs.base import QueueStats, Room
from bgsvc.jobs.model import BatchItem, BatchRecord, JobError, JobRecord, JobStatus
from bgsvc.jobs.sqlite import turns
from bgsvc.jobs.sqlite.schema import BATCH_COLUMNS as _BATCH_COLUMNS
from bgsvc.jobs.sqlite.schema import COLUMNS as _COLUMNS
from bgsvc.jobs.sqlite.schema import (
    QUEUE_UNFINISHED,
    TENANT_UNFINISHED,
    check_room,
    migrate,
    transaction,
)

T = TypeVar("T")


def _by_idempotency_key(
    db: sqlite3.Connection, key: str, tenant: str | None, client: str
) -> JobRecord | None:
    # Idempotency keys are the tenant's own (the client address's without keys): another
    # tenant's key of the same text is another job.
    if tenant is not None:
        where, who = "tenant = ?", tenant
    else:
        where, who = "tenant IS NULL AND client = ?", client
    row = db.execute(
        f"SELECT {_COLUMNS} FROM jobs WHERE {where} AND idempotency_key = ?", (who, key)
    ).fetchone()
    return None if row is None else _record(row)


def _record(row: sqlite3.Row) -> JobRecord:
    error = None
    if row["error_code"] is not None:
        error = JobError(row["error_code"], row["error_message"] or "")
    return JobRecord(
        id=row["id"],
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        error=error,
        options=json.loads(row["options"]),
        input_key=row["input_key"],
        fingerprint=row["fingerprint"],
        result_key=row["result_key"],
        content_type=row["content_type"],
        client=row["client"],
        idempotency_key=row["idempotency_key"],
        callback_url=row["callback_url"],
        webhook_attempts=json.loads(row["webhook_attempts"]),
        owner=row["owner"],
        batch_id=row["batch_id"],
        tenant=row["tenant"],
        credits=row["credits"] or 0,
        frames_done=row["frames_done"],
        frames_total=row["frames_total"],
        parent=row["parent"],
        segments=row["segments"] or 0,
    )


def _batch(row: sqlite3.Row) -> BatchRecord:
    return BatchRecord(
        id=row["id"],
        created_at=row["created_at"],
        client=row["client"],
        callback_url=row["callback_url"],
        items=[BatchItem(i["name"], i["job_id"]) for i in json.loads(row["items"])],
        completed_at=row["completed_at"],
        webhook_attempts=json.loads(row["webhook_attempts"]),
        tenant=row["tenant"],
    )


def _insert_job(db: sqlite3.Connection, record: JobRecord) -> None:
    """``record`` queued at its key's next turn (call within the write lock)."""
    db.execute(
        f"INSERT INTO jobs ({_COLUMNS}, turn, placed) VALUES "
        "(?, ?, ?, NULL, NULL, 0, NULL, NULL, ?, ?, ?, NULL, NULL, ?, ?, ?, '[]', NULL, ?, ?, ?, "
        "NULL, NULL, ?, ?, ?, ?)",
        (
            record.id,
            record.status.value,
            record.created_at,
            json.dumps(record.options),
            record.input_key,
            record.fingerprint,
            record.client,
            record.idempotency_key,
            record.callback_url,
            record.batch_id,
            record.tenant,
            record.credits,
            record.parent,
            record.segments,
            *turns.place(db, record.tenant),
        ),
    )


def _segment_index(record: JobRecord) -> int:
    """Where a segment is in its parent's order (its id is segment_id(parent, index))."""
    suffix = record.id.rpartition("_s")[2]
    return int(suffix) if suffix.isdigit() else -1


class SqliteJobStore:
    """:class:`bgsvc.jobs.base.JobStore` on one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection, used by one thread at a time (the lock): the calls are short.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL survives a killed process (not a power cut) without an fsync
        # per commit.
        self._db.execute("PRAGMA synchronous = NORMAL")
        migrate(self._db)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._db)

        return await anyio.to_thread.run_sync(locked)

    async def find_idempotent(self, key: str, tenant: str | None, client: str) -> JobRecord | None:
        return await self._run(lambda db: _by_idempotency_key(db, key, tenant, client))

    async def create(self, record: JobRecord, room: Room) -> tuple[JobRecord, bool]:
        def existing(db: sqlite3.Connection) -> JobRecord | None:
            if record.idempotency_key is None:
                return None
            return _by_idempotency_key(db, record.idempotency_key, record.tenant, record.client)

        def insert(db: sqlite3.Connection) -> tuple[JobRecord, bool]:
            def create() -> tuple[JobRecord, bool]:
                # A retry finds its job even when the queue is full now.
                found = existing(db)
                if found is not None:
                    return found, False
                check_room(db, record.tenant, 1, room)
                _insert_job(db, record)
                return record, True

            return transaction(db, create)

        return await self._run(insert)

    async def get(self, job_id: str) -> JobRecord | None:
        def select(db: sqlite3.Connection) -> JobRecord | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _record(row)

        return await self._run(select)

    async def stats(self) -> QueueStats:
        def count(db: sqlite3.Connection) -> QueueStats:
            row = db.execute(
                "SELECT SUM(status = 'queued'), SUM(status = 'running'), "
                "MIN(CASE WHEN status = 'queued' THEN created_at END) "
                "FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
            return QueueStats(int(row[0] or 0), int(row[1] or 0), row[2])

        return await self._run(count)

    async def places(self) -> int:
        return await self._run(lambda db: int(db.execute(QUEUE_UNFINISHED).fetchone()[0]))

    async def tenant_unfinished(self, tenant: str) -> int:
        def count(db: sqlite3.Connection) -> int:
            row = db.execute(TENANT_UNFINISHED, (tenant,)).fetchone()
            return int(row[0])

        return await self._run(count)

    async def heartbeat(self) -> None:
        """Nothing to do: a dead owner is found by its pid (JobRunner.orphaned)."""

    async def claim(self, owner: str, now: float) -> JobRecord | None:
        def take(db: sqlite3.Connection) -> JobRecord | None:
            row = db.execute(
                "UPDATE jobs SET status = 'running', owner = ?, started_at = ?, "
                f"attempts = attempts + 1 WHERE id = ({turns.NEXT_QUEUED}) "
                f"AND status = 'queued' RETURNING {_COLUMNS}, turn",
                (owner, now),
            ).fetchone()
            if row is None:
                return None
            turns.claimed(db, row["turn"])
            return _record(row)

        return await self._run(lambda db: transaction(db, lambda: take(db)))

    async def requeue(
        self, job_id: str, owner: str, error: JobError, *, keep_turn: bool = False
    ) -> bool:
        def update(db: sqlite3.Connection) -> bool:
            def back() -> bool:
                row = db.execute(
                    "SELECT tenant, turn FROM jobs WHERE id = ? AND status = 'running' "
                    "AND owner = ?",
                    (job_id, owner),
                ).fetchone()
                if row is None:
                    return False
                turn, placed = turns.place(db, row["tenant"], row["turn"] if keep_turn else None)
                db.execute(
                    "UPDATE jobs SET status = 'queued', owner = NULL, error_code = ?, "
                    "error_message = ?, turn = ?, placed = ? WHERE id = ?",
                    (error.code, error.message, turn, placed, job_id),
                )
                return True

            return transaction(db, back)

        return await self._run(update)

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
        def end(db: sqlite3.Connection) -> bool:
            # All rows read (the one): the statement is done before the next one runs.
            rows = db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error_code = ?, "
                "error_message = ?, result_key = ?, content_type = ?, owner = NULL "
                "WHERE id = ? AND status = 'running' AND owner = ? RETURNING parent",
                (
                    status.value,
                    now,
                    None if error is None else error.code,
                    None if error is None else error.message,
                    result_key,
                    content_type,
                    job_id,
                    owner,
                ),
            ).fetchall()
            if not rows:
                return False
            parent = rows[0]["parent"]
            if parent is not None:
                # The last of a video's segments to end (however it ended): the video is
                # queued again, to be stitched, at its own turn (claimed already: next). A
                # retried finish matched no row above, and a parent queued already is not
                # waiting: it is queued once.
                db.execute(
                    "UPDATE jobs SET status = 'queued', owner = NULL, placed = ? "
                    "WHERE id = ? AND status = 'waiting' AND NOT EXISTS (SELECT 1 FROM jobs "
                    "WHERE parent = ? AND status IN ('queued', 'running'))",
                    (turns.placement(db), parent, parent),
                )
            return True

        def update(db: sqlite3.Connection) -> bool:
            # One transaction: two segments ending at once cannot both see the other running.
            return transaction(db, lambda: end(db))

        return await self._run(update)

    async def progress(self, job_id: str, owner: str, done: int, total: int) -> None:
        def update(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET frames_done = ?, frames_total = ? "
                "WHERE id = ? AND status = 'running' AND owner = ?",
                (done, total, job_id, owner),
            )

        await self._run(update)

    async def cancel(self, job_id: str, now: float) -> bool:
        def update(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET status = 'canceled', finished_at = ? "
                "WHERE id = ? AND status = 'queued' AND segments = 0",
                (now, job_id),
            )
            return cursor.rowcount == 1

        return await self._run(update)

    async def delete(self, job_id: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM jobs WHERE id = ? OR parent = ?", (job_id, job_id))
        )

    async def add_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None:
        def update(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE jobs SET webhook_attempts = json_insert(webhook_attempts, '$[#]', "
                "json(?)) WHERE id = ?",
                (json.dumps(attempt), job_id),
            )

        await self._run(update)

    async def recover(self, orphaned: Callable[[str], bool], started_before: float) -> int:
        def update(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "SELECT id, owner, started_at FROM jobs WHERE status = 'running'"
            ).fetchall()
            stale = [
                (r["id"], r["owner"])
                for r in rows
                if r["owner"] is None
                or orphaned(r["owner"])
                or (r["started_at"] or 0.0) < started_before
            ]
            for job_id, owner in stale:
                db.execute(
                    "UPDATE jobs SET status = 'queued', owner = NULL "
                    "WHERE id = ? AND status = 'running' AND owner IS ?",
                    (job_id, owner),
                )
            return len(stale)

        return await self._run(update)

    async def expire(self, before: float) -> list[JobRecord]:
        def update(db: sqlite3.Connection) -> list[JobRecord]:
            rows = db.execute(
                "UPDATE jobs SET status = 'expired' WHERE "
                "(status IN ('succeeded', 'failed', 'canceled') AND finished_at < ?) OR "
                "(status IN ('queued', 'waiting') AND created_at < ?) "
                f"RETURNING {_COLUMNS}",
                (before, before),
            ).fetchall()
            return [_record(r) for r in rows]

        return await self._run(update)

    async def purge(self, before: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM jobs WHERE status = 'expired' "
                "AND COALESCE(finished_at, created_at) < ?",
                (before,),
            )
            # A batch is never without items while it lives (created with them in one
            # transaction), so one without any was purged or deleted item by item.
            db.execute(
                "DELETE FROM batches WHERE NOT EXISTS "
                "(SELECT 1 FROM jobs WHERE jobs.batch_id = batches.id)"
            )
            return cursor.rowcount

        return await self._run(delete)

    async def split(
        self, job_id: str, owner: str, segments: list[JobRecord], frames_total: int
    ) -> bool:
        def update(db: sqlite3.Connection) -> bool:
            def cut() -> bool:
                # Its attempts start over: the stitch's claim is not another try at the
                # split, and must not find them spent (BGSVC_JOB_MAX_ATTEMPTS of 1 would
                # fail every cut video after its segments ran).
                cursor = db.execute(
                    "UPDATE jobs SET status = 'waiting', owner = NULL, segments = ?, "
                    "frames_total = ?, frames_done = 0, attempts = 0 "
                    "WHERE id = ? AND status = 'running' AND owner = ?",
                    (len(segments), frames_total, job_id, owner),
                )
                if cursor.rowcount != 1:
                    return False
                # The same video cut again (its ids are derived): this cut replaces the last.
                db.execute("DELETE FROM jobs WHERE parent = ?", (job_id,))
                # No room checked: the video had its room. They take its key's next turns,
                # in order: after the jobs the key queued before this cut, and taking
                # turns with other keys' jobs as any job of the key does.
                for record in segments:
                    _insert_job(db, record)
                return True

            return transaction(db, cut)

        return await self._run(update)

    async def segments_of(self, job_id: str) -> list[JobRecord]:
        def select(db: sqlite3.Connection) -> list[JobRecord]:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE parent = ?", (job_id,))
            return sorted((_record(r) for r in rows.fetchall()), key=_segment_index)

        return await self._run(select)

    async def create_batch(self, batch: BatchRecord, jobs: list[JobRecord], room: Room) -> None:
        items = json.dumps([{"name": i.name, "job_id": i.job_id} for i in batch.items])

        def insert(db: sqlite3.Connection) -> None:
            # One transaction: a runner never claims an item of a batch that is not whole.
            def create() -> None:
                check_room(db, batch.tenant, len(jobs), room)
                db.execute(
                    f"INSERT INTO batches ({_BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, '[]', ?)",
                    (
                        batch.id,
                        batch.created_at,
                        batch.client,
                        batch.callback_url,
                        items,
                        batch.tenant,
                    ),
                )
                for record in jobs:
                    _insert_job(db, record)

            transaction(db, create)

        await self._run(insert)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        def select(db: sqlite3.Connection) -> BatchRecord | None:
            row = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
            return None if row is None else _batch(row)

        return await self._run(select)

    async def batch_jobs(self, batch_id: str) -> list[JobRecord]:
        def select(db: sqlite3.Connection) -> list[JobRecord]:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE batch_id = ?", (batch_id,))
            return [_record(r) for r in rows.fetchall()]

        return await self._run(select)

    async def complete_batch(self, batch_id: str, now: float) -> BatchRecord | None:
        def update(db: sqlite3.Connection) -> BatchRecord | None:
            row = db.execute(
                "UPDATE batches SET completed_at = ? WHERE id = ? AND completed_at IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM jobs WHERE batch_id = ? "
                f"AND status IN ('queued', 'running', 'waiting')) RETURNING {_BATCH_COLUMNS}",
                (now, batch_id, batch_id),
            ).fetchone()
            return None if row is None else _batch(row)

        return await self._run(update)

    async def add_batch_webhook_attempt(self, batch_id: str, attempt: dict[str, Any]) -> None:
        def update(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE batches SET webhook_attempts = json_insert(webhook_attempts, '$[#]', "
                "json(?)) WHERE id = ?",
                (json.dumps(attempt), batch_id),
            )

        await self._run(update)

    async def delete_batch(self, batch_id: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM batches WHERE id = ?", (batch_id,)))

    async def close(self) -> None:
        await self._run(lambda db: db.close())
