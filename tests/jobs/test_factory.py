"""open_store picks the job store from the settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bgsvc.config import Settings
from bgsvc.jobs.factory import DB_NAME, db_path, open_store
from bgsvc.jobs.sqlite.store import SqliteJobStore
from tests.redis_server import RedisServer, redis_server  # noqa: F401


def test_without_redis_jobs_live_in_a_sqlite_file_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    store = open_store(settings)
    assert isinstance(store, SqliteJobStore)
    assert store.path == db_path(settings) == tmp_path.resolve() / DB_NAME
    asyncio.run(store.close())


@pytest.mark.redis
def test_with_a_redis_url_jobs_are_shared_through_redis(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    from bgsvc.jobs.redis.store import RedisJobStore

    store = open_store(Settings(data_dir=tmp_path, redis_url=redis_server.url))
    assert isinstance(store, RedisJobStore)
    assert not db_path(Settings(data_dir=tmp_path)).exists()
    asyncio.run(store.close())
