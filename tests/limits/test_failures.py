"""A store that fails: fail-open admits (counted, one warning), fail-closed refuses."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from bgsvc.errors import LimitsUnavailable
from bgsvc.limits.base import Limits, RatePolicy
from tests.limits.conftest import Store
from tests.redis_server import RedisServer

POLICY = RatePolicy(limit=6, window_s=60.0, burst=3)


def broken(store: Store, tmp_path: Path, *, fail_open: bool) -> Limits:
    """A limiter whose store fails: Redis stopped, or a SQLite path that is a directory."""
    if store.server is not None:
        store.server.stop()
        return store.make(fail_open=fail_open)
    return store.make(fail_open=fail_open, target=str(tmp_path))


def test_fail_open_admits_everything_counts_it_and_warns_once(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        limits = broken(store, tmp_path, fail_open=True)
        try:
            hits = [await limits.hit("k", POLICY) for _ in range(5)]
            assert all(d.allowed for d in hits)
            assert hits[0].remaining == 2 and hits[0].retry_after_s == 0
            quota = await limits.consume_quota("k", 1, cost=1)
            assert quota.allowed and quota.limit == 1 and not quota.recorded
            assert (await limits.hit_failed_auth("192.0.2.1")).allowed
            await limits.refund_quota("k")
            # A read has no harmless answer: the account page says the truth (unavailable).
            with pytest.raises(LimitsUnavailable):
                await limits.quota_used("k")
        finally:
            await limits.aclose()

    with caplog.at_level(logging.WARNING, logger="bgsvc.limits"):
        asyncio.run(main())
    assert store.errors == ["admitted"] * 8 + ["refused"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "admitted unchecked" in warnings[0].getMessage()


def test_fail_closed_refuses_with_503_limits_unavailable(store: Store, tmp_path: Path) -> None:
    async def main() -> list[LimitsUnavailable]:
        limits = broken(store, tmp_path, fail_open=False)
        refused = []
        try:
            for call in (
                lambda: limits.hit("k", POLICY),
                lambda: limits.consume_quota("k", 10),
                lambda: limits.hit_failed_auth("192.0.2.1"),
            ):
                with pytest.raises(LimitsUnavailable) as caught:
                    await call()
                refused.append(caught.value)
            # A refund of a request that failed anyway never turns into an error.
            await limits.refund_quota("k")
        finally:
            await limits.aclose()
        return refused

    refused = asyncio.run(main())
    assert [(e.status, e.code) for e in refused] == [(503, "limits_unavailable")] * 3
    assert all(e.retry_after and e.retry_after > 0 for e in refused)
    assert store.errors == ["refused"] * 3 + ["admitted"]


@pytest.mark.redis
def test_limits_recover_by_themselves_when_redis_is_back(redis_server: RedisServer) -> None:
    server = redis_server
    store = Store("redis", server.url, server)

    async def main() -> tuple[bool, bool]:
        limits = store.make(fail_open=False)
        try:
            assert (await limits.hit("back", POLICY)).allowed
            server.stop()
            with pytest.raises(LimitsUnavailable):
                await limits.hit("back", POLICY)
            server.start()
            # Skipped for a second after the error, then one probe finds Redis again.
            skipped = False
            try:
                await limits.hit("back", POLICY)
            except LimitsUnavailable:
                skipped = True
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                try:
                    return skipped, (await limits.hit("back", POLICY)).allowed
                except LimitsUnavailable:
                    continue
            return skipped, False
        finally:
            await limits.aclose()

    assert asyncio.run(main()) == (True, True)
