"""Limits of one node: a small SQLite file under BGSVC_DATA_DIR shared by its workers.

One file rather than a dict per process: gunicorn's workers of a node then share one
bucket per key (a limit of N/min is N/min for the node, not N per worker), and monthly
quotas survive restarts. Each process talks to the file from one thread of its own, so a
worker's event loop never waits on SQLite's lock; each hit is one short write
transaction (WAL journal, so readers never block).

The write lock is waited for here, not by SQLite's busy handler: that one sleeps between
attempts with a backoff that reaches 100 ms, and is not a queue, so a worker whose
neighbours keep the lock busy can sleep through every release. Three processes hammering
one file measured waits of 80-130 ms that way, and under load one wait passed the 1 s
timeout, which failed that worker's checks for a second. Retrying every fraction of a
millisecond catches the lock between two neighbours' transactions.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bgsvc.limits import gcra
from bgsvc.limits.base import QuotaDecision, RateDecision, RatePolicy
from bgsvc.limits.guard import Guard

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tat_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quota (
    key TEXT NOT NULL, month TEXT NOT NULL, used INTEGER NOT NULL, PRIMARY KEY (key, month)
);
"""
# Full buckets (TAT in the past) and months before the previous one carry no state.
SWEEP_EVERY_S = 60.0


class SqliteLimits:
    """:class:`bgsvc.limits.base.Limits` on a SQLite file (one node, every worker)."""

    def __init__(
        self,
        path: Path,
        *,
        auth_fail: RatePolicy,
        fail_open: bool = True,
        on_error: Callable[[str], None] = lambda action: None,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 1.0,
    ) -> None:
        self.path = path
        self.auth_fail = auth_fail
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._guard = Guard(
            store="sqlite",
            errors=(sqlite3.Error, OSError),
            fail_open=fail_open,
            on_error=on_error,
        )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bgsvc-limits")
        self._conn: sqlite3.Connection | None = None
        self._next_sweep = 0.0

    async def hit(self, key_name: str, policy: RatePolicy, cost: int = 1) -> RateDecision:
        return await self._bucket("k:" + key_name, policy, cost)

    async def hit_failed_auth(self, address: str) -> RateDecision:
        return await self._bucket("a:" + address, self.auth_fail, 1)

    async def consume_quota(self, key_name: str, monthly: int, cost: int = 1) -> QuotaDecision:
        month, reset_at = gcra.month_of(self._clock())

        def consume(conn: sqlite3.Connection) -> QuotaDecision:
            row = conn.execute(
                "SELECT used FROM quota WHERE key = ? AND month = ?", (key_name, month)
            ).fetchone()
            used = row[0] if row else 0
            if used + cost > monthly:
                return QuotaDecision(False, monthly, used, reset_at)
            conn.execute(
                "INSERT INTO quota (key, month, used) VALUES (?, ?, ?) "
                "ON CONFLICT (key, month) DO UPDATE SET used = excluded.used",
                (key_name, month, used + cost),
            )
            return QuotaDecision(True, monthly, used + cost, reset_at)

        return await self._guard.run(
            lambda: self._write(consume),
            lambda: QuotaDecision(True, monthly, cost, reset_at, recorded=False),
        )

    async def refund_quota(self, key_name: str, cost: int = 1) -> None:
        month, _ = gcra.month_of(self._clock())

        def refund(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE quota SET used = max(0, used - ?) WHERE key = ? AND month = ?",
                (cost, key_name, month),
            )

        await self._guard.run(lambda: self._write(refund), lambda: None, on_fail="ignore")

    async def quota_used(self, key_name: str) -> int:
        month, _ = gcra.month_of(self._clock())

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT used FROM quota WHERE key = ? AND month = ?", (key_name, month)
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._guard.run(
            lambda: self._call(lambda conn: self._when_free(lambda: read(conn))),
            lambda: 0,
            on_fail="raise",
        )

    async def aclose(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    async def _bucket(self, key: str, policy: RatePolicy, cost: int) -> RateDecision:
        def take(conn: sqlite3.Connection) -> RateDecision:
            # Read under the write lock: hits of every worker then see time move forward.
            now_us = round(self._clock() * gcra.US)
            row = conn.execute("SELECT tat_us FROM buckets WHERE key = ?", (key,)).fetchone()
            allowed, tat = gcra.step(policy, cost, now_us, row[0] if row else None)
            if allowed:
                conn.execute(
                    "INSERT INTO buckets (key, tat_us) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET tat_us = excluded.tat_us",
                    (key, tat),
                )
            return gcra.describe(policy, cost, allowed, now_us, tat)

        return await self._guard.run(
            lambda: self._write(take), lambda: gcra.admitted_unchecked(policy, cost)
        )

    async def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """``body`` in one write transaction: BEGIN IMMEDIATE takes the file's write lock
        first, so two workers' read-modify-writes of one bucket never interleave."""

        def transaction(conn: sqlite3.Connection) -> T:
            self._begin(conn)
            try:
                result = body(conn)
                # Inside the write transaction: an autocommit DELETE would start as a reader
                # and fail at once (SQLITE_BUSY_SNAPSHOT) when a neighbour wrote meanwhile.
                self._maybe_sweep(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._call(transaction)

    def _begin(self, conn: sqlite3.Connection) -> None:
        self._when_free(lambda: conn.execute("BEGIN IMMEDIATE"))

    def _when_free(self, step: Callable[[], T]) -> T:
        """``step``, retried every 0.1-1 ms while the file is busy, until the busy timeout
        (module docstring). Reads need it too: a WAL reader is refused while another
        connection recovers the WAL or holds the file exclusively."""
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.0001
        while True:
            try:
                return step()
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.001)

    async def _call(self, body: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: body(self._connection())
        )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # A power cut may lose the last hits, never corrupt the file: cheap enough
                # to pay on every request, which FULL (an fsync per commit) is not.
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                # From here on the lock is waited for by _when_free (module docstring).
                conn.execute("PRAGMA busy_timeout = 0")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _maybe_sweep(self, conn: sqlite3.Connection) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        wall = self._clock()
        previous, _ = gcra.month_of(wall - 32 * 86400)
        conn.execute("DELETE FROM buckets WHERE tat_us < ?", (round(wall * gcra.US),))
        conn.execute("DELETE FROM quota WHERE month < ?", (previous,))
