"""open_store picks the key store from the settings."""

from __future__ import annotations

from pathlib import Path

from bgsvc.auth.factory import DB_NAME, open_store
from bgsvc.auth.redis import RedisKeyStore
from bgsvc.auth.sqlite import SqliteKeyStore
from bgsvc.config import Settings


def test_without_redis_keys_live_in_a_sqlite_file_under_the_data_dir(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path))
    try:
        assert isinstance(store, SqliteKeyStore)
        assert (tmp_path / DB_NAME).exists()
    finally:
        store.close()


def test_with_a_redis_url_keys_are_shared_through_redis(tmp_path: Path) -> None:
    # Nothing is sent at construction, so no server is needed to see the choice.
    store = open_store(Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0"))
    try:
        assert isinstance(store, RedisKeyStore)
        assert not (tmp_path / DB_NAME).exists()
    finally:
        store.close()
