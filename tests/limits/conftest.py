"""Both stores behind one fixture: every behaviour test runs on SQLite and on Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bgsvc.limits.base import Limits, RatePolicy
from tests.redis_server import RedisServer, redis_server

__all__ = ["Store", "redis_server", "store"]


@dataclass
class Store:
    """Builds limiters on one store (call it inside the event loop that uses them)."""

    kind: str
    target: str  # the SQLite file, or the Redis URL
    server: RedisServer | None = None
    errors: list[str] = field(default_factory=list)

    def make(
        self,
        *,
        auth_fail: str = "3/min",
        fail_open: bool = True,
        clock: Callable[[], float] = time.time,
        target: str | None = None,
    ) -> Limits:
        common: dict[str, Any] = {
            "auth_fail": RatePolicy.parse(auth_fail),
            "fail_open": fail_open,
            "on_error": self.errors.append,
            "clock": clock,
        }
        if self.kind == "redis":
            from bgsvc.limits.redis import RedisLimits

            return RedisLimits(target or self.target, socket_timeout_s=0.5, **common)
        from bgsvc.limits.sqlite import SqliteLimits

        return SqliteLimits(Path(target or self.target), **common)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return Store("redis", server.url, server)
    return Store("sqlite", str(tmp_path / "limits.sqlite3"))
