"""The one place that picks the key store from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bgsvc.auth.base import KeyStore

if TYPE_CHECKING:
    from bgsvc.config import Settings

DB_NAME = "keys.sqlite3"


def open_store(settings: Settings) -> KeyStore:
    """Redis when BGSVC_REDIS_URL is set (every node sees a revocation at once), else a
    SQLite file in the data directory."""
    if settings.redis_url:
        # Imported only here: redis is an extra, and a single node never loads it.
        from bgsvc.auth.redis import RedisKeyStore

        return RedisKeyStore(settings.redis_url, settings.redis_socket_timeout_s)
    from bgsvc.auth.sqlite import SqliteKeyStore

    return SqliteKeyStore(settings.data_dir / DB_NAME)
