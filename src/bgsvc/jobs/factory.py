"""The one place that picks the job store from the settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bgsvc.jobs.base import JobStore

if TYPE_CHECKING:
    from bgsvc.config import Settings

DB_NAME = "jobs.sqlite3"


def db_path(settings: Settings) -> Path:
    """Where the embedded mode's SQLite file is (or will be) under BGSVC_DATA_DIR."""
    return settings.data_dir.expanduser().resolve() / DB_NAME


def open_store(settings: Settings) -> JobStore:
    """Redis (a queue every node consumes) when BGSVC_REDIS_URL is set, else the node's
    SQLite file under BGSVC_DATA_DIR."""
    if settings.redis_url:
        # Imported only here: redis and dramatiq stay unloaded on a single node.
        from bgsvc.jobs.redis.store import RedisJobStore

        return RedisJobStore(
            settings.redis_url,
            ttl_s=settings.job_ttl_s,
            heartbeat_timeout_s=settings.job_redeliver_s,
            socket_timeout_s=max(2.0, settings.redis_socket_timeout_s),
        )
    from bgsvc.jobs.sqlite.store import SqliteJobStore

    return SqliteJobStore(db_path(settings))
