"""Turns between keys in the embedded store: which queued job a claim takes.

Each job gets a turn when it is queued: one past the later of the queue's clock (the latest
turn claimed) and the last turn among its key's queued jobs. A claim takes the lowest turn,
the first queued among equal ones, and moves the clock to it. So a key that queues 200 jobs
gets turns 1-200 while a key that queues one job after it gets the clock's next turn: it
waits for at most one job of each other key, not for the backlog (start-time fair queueing
with one unit a job). A key's canceled or expired jobs hold no turns, and jobs without a key
share one line. The Redis store keeps the same turns (bgsvc.jobs.redis.scripts).
"""

from __future__ import annotations

import sqlite3

# The clock and the count of placements.
TABLE = """
CREATE TABLE IF NOT EXISTS queue_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
# ``placed`` numbers the placements: among jobs of one turn, the first queued runs first, as
# in the Redis store (where a retried job's submission time would not say so). Rows from
# before turns (NULL) sort first: they were queued before any turn was given.
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_queue_order ON jobs (status, turn, placed);
CREATE INDEX IF NOT EXISTS jobs_key_turns ON jobs (tenant, status, turn) WHERE tenant IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_keyless_turns ON jobs (status, turn) WHERE tenant IS NULL;
"""
NEXT_QUEUED = (
    "SELECT id FROM jobs WHERE status = 'queued' ORDER BY turn, placed, created_at LIMIT 1"
)

_CLOCK = "clock"
_PLACED = "placed"


def _value(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM queue_counters WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def place(db: sqlite3.Connection, tenant: str | None, turn: int | None = None) -> tuple[int, int]:
    """(turn, placement) of a job ``tenant`` queues now, at ``turn`` if it keeps one, else
    at its key's next turn (call within the write lock)."""
    if turn is None:
        # Each on an index of its own (jobs_key_turns, jobs_keyless_turns): this runs under
        # the write lock, once for each of a video's segments, beside a queue of any length.
        if tenant is None:
            last = db.execute(
                "SELECT MAX(turn) FROM jobs WHERE tenant IS NULL AND status = 'queued'"
            ).fetchone()
        else:
            last = db.execute(
                "SELECT MAX(turn) FROM jobs WHERE tenant = ? AND status = 'queued'", (tenant,)
            ).fetchone()
        turn = max(_value(db, _CLOCK), last[0] or 0) + 1
    return turn, placement(db)


def placement(db: sqlite3.Connection) -> int:
    """The number of a placement now: among jobs of one turn, a lower one runs first."""
    placed = _value(db, _PLACED) + 1
    db.execute(
        "INSERT INTO queue_counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (_PLACED, placed),
    )
    return placed


def claimed(db: sqlite3.Connection, turn: int | None) -> None:
    """A job of ``turn`` was claimed: the clock is at least there."""
    if turn is not None:
        db.execute(
            "INSERT INTO queue_counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
            (_CLOCK, turn),
        )
