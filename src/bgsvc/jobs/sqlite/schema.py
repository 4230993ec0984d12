"""The embedded job store's tables, the migration of a database made by an earlier
release (run on every open; each step is idempotent), and the write lock its creates
count under."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from bgsvc.jobs.base import NoRoom, Room
from bgsvc.jobs.sqlite import turns

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    options TEXT NOT NULL,
    input_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result_key TEXT,
    content_type TEXT,
    client TEXT NOT NULL,
    idempotency_key TEXT,
    callback_url TEXT,
    webhook_attempts TEXT NOT NULL DEFAULT '[]',
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    client TEXT NOT NULL,
    callback_url TEXT,
    items TEXT NOT NULL,
    completed_at REAL,
    webhook_attempts TEXT NOT NULL DEFAULT '[]'
);
"""

# Columns added after the first release: a database created before them gets them here.
# A record from before ``tenant`` existed has none: with keys required no key sees it (it
# expires with its TTL), with keys off everyone does, as before.
_ADDED_COLUMNS = {
    "jobs": {
        "batch_id": "TEXT",
        "tenant": "TEXT",
        "credits": "INTEGER NOT NULL DEFAULT 0",
        "frames_done": "INTEGER",
        "frames_total": "INTEGER",
        # A video cut into segments: a segment's parent, and a parent's count of segments.
        "parent": "TEXT",
        "segments": "INTEGER NOT NULL DEFAULT 0",
        # Where a queued job stands among the keys' turns (bgsvc.jobs.sqlite.turns).
        "turn": "INTEGER",
        "placed": "INTEGER",
    },
    "batches": {"tenant": "TEXT"},
}

_INDEXES = """
DROP INDEX IF EXISTS jobs_idempotency;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_tenant
    ON jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND tenant IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_client
    ON jobs (client, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND tenant IS NULL;
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id);
CREATE INDEX IF NOT EXISTS jobs_tenant_status ON jobs (tenant, status) WHERE tenant IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent) WHERE parent IS NOT NULL;
"""

COLUMNS = (
    "id, status, created_at, started_at, finished_at, attempts, error_code, error_message, "
    "options, input_key, fingerprint, result_key, content_type, client, idempotency_key, "
    "callback_url, webhook_attempts, owner, batch_id, tenant, credits, frames_done, frames_total, "
    "parent, segments"
)
BATCH_COLUMNS = (
    "id, created_at, client, callback_url, items, completed_at, webhook_attempts, tenant"
)


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables, add the columns and indexes a database lacks. Idempotency keys
    were once unique per client address; they are now unique per tenant (per address only
    for jobs submitted without a key), so the old index gives way to two partial ones."""
    db.executescript(_SCHEMA)
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                try:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as exc:
                    # Another worker of the node, opening the file at the same moment.
                    if "duplicate column" not in str(exc):
                        raise
    db.executescript(_INDEXES)
    db.executescript(turns.TABLE)
    db.executescript(turns.INDEXES)


# A tenant's unfinished jobs: a video waiting on its segments is one, its segments none
# (as the Redis store counts them: segments never enter the tenant's set of open jobs).
TENANT_UNFINISHED = (
    "SELECT COUNT(*) FROM jobs WHERE tenant = ? AND status IN ('queued', 'running', 'waiting') "
    "AND parent IS NULL"
)


# The queue's: a video cut into segments is one place, waiting or not, as it was when
# submitted; its segments are queued with no room checked, and were each a place, one key's
# few long videos would fill the queue past its share, for every other key.
QUEUE_UNFINISHED = (
    "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running', 'waiting') AND parent IS NULL"
)


def check_room(db: sqlite3.Connection, tenant: str | None, jobs: int, room: Room) -> None:
    unfinished = db.execute(QUEUE_UNFINISHED).fetchone()[0]
    if unfinished + jobs > room.limit:
        raise NoRoom("queue", unfinished)
    if tenant is not None:
        mine = db.execute(TENANT_UNFINISHED, (tenant,)).fetchone()[0]
        if mine + jobs > room.per_tenant:
            raise NoRoom("tenant", mine)


def transaction(db: sqlite3.Connection, fn: Callable[[], T]) -> T:
    """``fn`` under the database's write lock (BEGIN IMMEDIATE): what it counts cannot
    change before what it writes is committed, whichever process writes next."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result
