"""Keys in a SQLite file under the data directory (one node, or nodes sharing a disk)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from bgsvc.auth.base import ApiKey, KeyExists, KeyNotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    rate TEXT,
    burst INTEGER,
    quota INTEGER,
    created_at REAL NOT NULL,
    revoked_at REAL,
    webhook_salt TEXT
)
"""
_COLUMNS = "name, digest, scopes, rate, burst, quota, created_at, revoked_at, webhook_salt"


def _row_to_key(row: tuple[object, ...]) -> ApiKey:
    name, digest, scopes, rate, burst, quota, created_at, revoked_at, webhook_salt = row
    return ApiKey(
        name=str(name),
        digest=str(digest),
        scopes=frozenset(str(scopes).split(",")),
        rate=None if rate is None else str(rate),
        burst=None if burst is None else int(str(burst)),
        quota=None if quota is None else int(str(quota)),
        created_at=float(str(created_at)),
        revoked_at=None if revoked_at is None else float(str(revoked_at)),
        webhook_salt=None if webhook_salt is None else str(webhook_salt),
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns newer versions read to a table an older one made. In one
    IMMEDIATE transaction: two processes opening the file at once must not both add it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
        if "webhook_salt" not in columns:
            db.execute("ALTER TABLE api_keys ADD COLUMN webhook_salt TEXT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteKeyStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per store, used from the event loop's worker threads in turn.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(_SCHEMA)
        _migrate(self._db)

    def add(self, key: ApiKey) -> None:
        try:
            with self._lock:
                self._db.execute(
                    f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key.name,
                        key.digest,
                        ",".join(sorted(key.scopes)),
                        key.rate,
                        key.burst,
                        key.quota,
                        key.created_at,
                        key.revoked_at,
                        key.webhook_salt,
                    ),
                )
        except sqlite3.IntegrityError:
            raise KeyExists(f"a key named {key.name!r} exists already") from None

    def _select(self, column: str, value: str) -> ApiKey | None:
        """The key whose ``column`` is ``value``; the caller holds the lock."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE {column} = ?", (value,)
        ).fetchone()
        return None if row is None else _row_to_key(row)

    def _one(self, column: str, value: str) -> ApiKey | None:
        with self._lock:
            return self._select(column, value)

    def _named(self, name: str) -> ApiKey:
        """After a write by name, under the lock: the key as stored, or KeyNotFound."""
        key = self._select("name", name)
        if key is None:
            raise KeyNotFound(f"no key named {name!r}")
        return key

    def by_digest(self, digest: str) -> ApiKey | None:
        return self._one("digest", digest)

    def by_name(self, name: str) -> ApiKey | None:
        return self._one("name", name)

    def set_webhook_salt(self, name: str, salt: str) -> ApiKey:
        with self._lock:
            self._db.execute("UPDATE api_keys SET webhook_salt = ? WHERE name = ?", (salt, name))
            return self._named(name)

    def all(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY name").fetchall()
        return [_row_to_key(row) for row in rows]

    def revoke(self, name: str, at: float) -> ApiKey:
        with self._lock:
            self._db.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE name = ?",
                (at, name),
            )
            return self._named(name)

    def close(self) -> None:
        self._db.close()
