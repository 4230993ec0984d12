"""The node's SQLite limiter waits for the write lock itself, briefly and boundedly."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bgsvc.errors import LimitsUnavailable
from bgsvc.limits.base import RatePolicy
from bgsvc.limits.sqlite import SqliteLimits

POLICY = RatePolicy(limit=100, window_s=1.0, burst=50)


def hold_write_lock(
    path: Path, seconds: float, held: threading.Event, released: list[float]
) -> None:
    """Another worker's transaction: the file's write lock for ``seconds``; ``released``
    gets the time just before its COMMIT, which no hit can complete before."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    released.append(time.monotonic())
    conn.execute("COMMIT")
    conn.close()


def limits_on(path: Path, *, busy_timeout_s: float) -> SqliteLimits:
    return SqliteLimits(
        path,
        auth_fail=RatePolicy.parse("3/min"),
        fail_open=False,
        busy_timeout_s=busy_timeout_s,
    )


async def hit_while_another_holds_the_lock(
    path: Path, *, hold_s: float, busy_timeout_s: float
) -> tuple[bool, float]:
    """(allowed, seconds from the neighbour's COMMIT to the hit's answer)."""
    limits = limits_on(path, busy_timeout_s=busy_timeout_s)
    await limits.hit("warm-up", POLICY)
    held = threading.Event()
    released: list[float] = []
    holder = threading.Thread(target=hold_write_lock, args=(path, hold_s, held, released))
    holder.start()
    held.wait(5)
    try:
        allowed = (await limits.hit("k", POLICY)).allowed
    finally:
        answered = time.monotonic()
        holder.join()
        await limits.aclose()
    return allowed, answered - released[0]


def test_a_hit_waits_for_a_neighbours_transaction_and_then_counts(tmp_path: Path) -> None:
    allowed, after_commit = asyncio.run(
        hit_while_another_holds_the_lock(
            tmp_path / "limits.sqlite3", hold_s=0.3, busy_timeout_s=5.0
        )
    )
    assert allowed
    # Answered after the neighbour let go, however late this thread started its hit.
    assert after_commit >= 0


def test_a_lock_held_past_the_busy_timeout_fails_the_check_closed(tmp_path: Path) -> None:
    with pytest.raises(LimitsUnavailable):
        asyncio.run(
            hit_while_another_holds_the_lock(
                tmp_path / "limits.sqlite3", hold_s=1.0, busy_timeout_s=0.2
            )
        )


class BusyOnce:
    """A connection whose next SELECT is refused once, as a WAL reader is while another
    connection recovers the WAL after a crash (not reproducible on demand)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.refused = 0

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if sql.startswith("SELECT") and not self.refused:
            self.refused += 1
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = sqlite3.SQLITE_BUSY_RECOVERY
            raise busy
        return self._conn.execute(sql, params)


async def quota_read_refused_once(path: Path) -> tuple[int, int]:
    limits = limits_on(path, busy_timeout_s=5.0)
    await limits.consume_quota("k", monthly=10, cost=3)
    busy = BusyOnce(limits._connection())
    limits._conn = busy  # type: ignore[assignment]
    try:
        return await limits.quota_used("k"), busy.refused
    finally:
        limits._conn = busy._conn
        await limits.aclose()


def test_a_quota_read_refused_while_the_file_is_busy_is_retried(tmp_path: Path) -> None:
    used, refused = asyncio.run(quota_read_refused_once(tmp_path / "limits.sqlite3"))
    assert refused == 1
    assert used == 3
