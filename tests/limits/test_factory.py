"""build_limits picks the store from the settings and wires the error metric."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pydantic
import pytest

from bgsvc.config import Settings
from bgsvc.limits.base import RatePolicy
from bgsvc.limits.factory import DB_NAME, build_limits
from bgsvc.limits.sqlite import SqliteLimits
from bgsvc.metrics import Metrics


def test_without_redis_the_node_shares_a_sqlite_file_under_the_data_dir(tmp_path: Path) -> None:
    limits = build_limits(Settings(data_dir=tmp_path, auth_fail_limit="5/hour"), Metrics())
    assert isinstance(limits, SqliteLimits)
    assert limits.path == tmp_path / DB_NAME
    assert limits.auth_fail == RatePolicy(5, 3600.0, 5)
    asyncio.run(limits.aclose())


def test_with_a_redis_url_the_limits_are_shared_through_redis() -> None:
    from bgsvc.limits.redis import RedisLimits

    settings = Settings(redis_url="redis://127.0.0.1:1/0", rate_limit_fail_open=False)
    limits = build_limits(settings, Metrics())
    assert isinstance(limits, RedisLimits)
    asyncio.run(limits.aclose())


def test_decisions_taken_without_the_store_are_counted_in_the_metric(tmp_path: Path) -> None:
    # A directory where the SQLite file should be: every call fails.
    (tmp_path / DB_NAME).mkdir()
    metrics = Metrics()
    limits = build_limits(Settings(data_dir=tmp_path), metrics)

    async def main() -> bool:
        try:
            return (await limits.hit("k", RatePolicy.parse("1/min"))).allowed
        finally:
            await limits.aclose()

    assert asyncio.run(main())
    text = metrics.render()[0].decode()
    assert 'bgsvc_limits_errors_total{action="admitted"} 1.0' in text


def test_an_unreadable_auth_fail_limit_is_refused_at_start() -> None:
    with pytest.raises(pydantic.ValidationError, match="auth_fail_limit"):
        Settings(auth_fail_limit="twenty a minute")
