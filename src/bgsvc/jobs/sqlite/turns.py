"""Turns between keys in the embedded store: which queued job a claim takes.

Each job gets a turn when it is queued: one past the later of its key's last turn and the
queue's clock (the latest turn claimed). A claim takes the lowest turn, oldest first among
equal ones, and moves the clock to it. So a key that queues 200 jobs gets turns 1-200
while a key that queues one job after it gets the clock's next turn: it waits for at most
one job of each other key, not for the backlog (start-time fair queueing with one unit a
job). Jobs without a key share one line. The Redis store keeps the same turns
(bgsvc.jobs.redis.scripts).
"""

from __future__ import annotations

import sqlite3

TABLE = """
CREATE TABLE IF NOT EXISTS turns (
    scope TEXT PRIMARY KEY,
    turn INTEGER NOT NULL
);
"""
# Rows from before turns (NULL) sort first: they were queued before any turn was given.
INDEX = "CREATE INDEX IF NOT EXISTS jobs_status_turn ON jobs (status, turn, created_at);"
NEXT_QUEUED = "SELECT id FROM jobs WHERE status = 'queued' ORDER BY turn, created_at LIMIT 1"

_CLOCK = "clock"


def _scope(tenant: str | None) -> str:
    return "keyless" if tenant is None else f"key:{tenant}"


def _get(db: sqlite3.Connection, scope: str) -> int:
    row = db.execute("SELECT turn FROM turns WHERE scope = ?", (scope,)).fetchone()
    return int(row[0]) if row is not None else 0


def _raise(db: sqlite3.Connection, scope: str, turn: int) -> None:
    db.execute(
        "INSERT INTO turns (scope, turn) VALUES (?, ?) "
        "ON CONFLICT (scope) DO UPDATE SET turn = MAX(turn, excluded.turn)",
        (scope, turn),
    )


def next_turn(db: sqlite3.Connection, tenant: str | None) -> int:
    """The turn of a job ``tenant`` queues now, taken (call within the write lock)."""
    scope = _scope(tenant)
    turn = max(_get(db, _CLOCK), _get(db, scope)) + 1
    _raise(db, scope, turn)
    return turn


def claimed(db: sqlite3.Connection, turn: int | None) -> None:
    """A job of ``turn`` was claimed: the clock is at least there."""
    if turn is not None:
        _raise(db, _CLOCK, turn)
