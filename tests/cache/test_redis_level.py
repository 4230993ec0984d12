"""The Redis level and the cross-node lock against a real redis-server."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

import pytest

from bgsvc.cache import CachedResult, codec
from bgsvc.cache.redis import RedisLevel, Unavailable
from bgsvc.cache.tiered import Outcome, TieredCache
from bgsvc.imaging.compose import Box
from tests.cache.test_tiered import Counts
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


@dataclass
class Done:
    output: CachedResult


def entry(tag: str) -> CachedResult:
    return CachedResult(
        body=tag.encode() * 100,
        media_type="image/png",
        format="png",
        width=2,
        height=3,
        box=Box(0, 1, 2, 2),
        model="m",
        source_size=(4, 6),
    )


def level(url: str, **kw: float) -> RedisLevel:
    values = {"ttl_s": 100.0, "jitter_s": 10.0, "socket_timeout_s": 0.5, **kw}
    return RedisLevel(url, **values)


def test_entries_get_ttls_within_the_jitter_bounds(redis_server: RedisServer) -> None:
    async def main() -> None:
        shared = level(redis_server.url)
        try:
            for i in range(40):
                assert await shared.put(f"k{i}", entry("x"))
            assert await shared.get("k0") == entry("x")
        finally:
            await shared.aclose()

    started = time.monotonic()
    asyncio.run(main())
    with redis_server.client() as client:
        ttls = [client.pttl(f"bgsvc:cache:r:k{i}") for i in range(40)]
    # A TTL read back has run down by the time since its put: at most this long.
    elapsed_ms = (time.monotonic() - started) * 1000 + 1
    assert all(90_000 - elapsed_ms <= t <= 110_000 for t in ttls), (elapsed_ms, ttls)
    # Jittered: forty draws from +-10 s do not land within one second of each other.
    assert max(ttls) - min(ttls) > 1000


def test_a_result_over_the_entry_limit_stays_out_of_redis(redis_server: RedisServer) -> None:
    small, large = entry("s"), entry("large")

    async def main() -> tuple[bool, bool]:
        shared = RedisLevel(
            redis_server.url,
            ttl_s=100.0,
            jitter_s=10.0,
            socket_timeout_s=0.5,
            max_entry_bytes=len(codec.dumps(small)),
        )
        try:
            return await shared.put("small", small), await shared.put("large", large)
        finally:
            await shared.aclose()

    assert asyncio.run(main()) == (True, False)
    with redis_server.client() as client:
        assert client.exists("bgsvc:cache:r:small") and not client.exists("bgsvc:cache:r:large")


def test_a_node_waits_for_the_lock_holder_and_takes_its_result(
    redis_server: RedisServer,
) -> None:
    calls = 0

    async def compute() -> Done:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        return Done(entry("holder"))

    async def main() -> list[Outcome[Done]]:
        # Two caches with their own connections and no shared memory: two nodes.
        nodes = [
            TieredCache(None, level(redis_server.url), lock_timeout_s=5.0, observer=Counts())
            for _ in range(2)
        ]
        try:
            first = asyncio.create_task(nodes[0].get_or_compute("k", compute))
            # The second node asks once the first holds the lock, however long its round
            # trips to Redis took.
            with redis_server.client() as probe:
                while not probe.exists("bgsvc:cache:l:k"):
                    assert not first.done()
                    await asyncio.sleep(0.005)
            second = await nodes[1].get_or_compute("k", compute)
            return [await first, second]
        finally:
            for node in nodes:
                await node.aclose()

    first, second = asyncio.run(main())
    assert calls == 1
    assert first.computed is not None
    assert second.source == "cluster" and second.entry == first.entry
    with redis_server.client() as client:
        assert client.exists("bgsvc:cache:l:k") == 0


def test_a_lock_holder_that_never_delivers_is_not_waited_on_forever(
    redis_server: RedisServer,
) -> None:
    with redis_server.client() as client:
        # A node that took the lock and died: the lock only expires.
        client.set("bgsvc:cache:l:k", "dead-node", px=10_000)

    async def compute() -> Done:
        return Done(entry("mine"))

    async def main() -> Outcome[Done]:
        node = TieredCache(None, level(redis_server.url), lock_timeout_s=0.3, observer=Counts())
        try:
            return await node.get_or_compute("k", compute)
        finally:
            await node.aclose()

    outcome = asyncio.run(main())
    assert outcome.computed is not None
    with redis_server.client() as client:
        assert client.get("bgsvc:cache:r:k") is not None
        # The dead node's lock is not ours to delete.
        assert client.get("bgsvc:cache:l:k") == b"dead-node"


def test_unreachable_redis_is_reported_then_skipped_until_the_retry_time(
    redis_server: RedisServer,
) -> None:
    errors = 0

    def on_error() -> None:
        nonlocal errors
        errors += 1

    redis_server.stop()

    async def main() -> list[bool]:
        shared = RedisLevel(
            redis_server.url,
            ttl_s=10,
            jitter_s=1,
            socket_timeout_s=0.5,
            on_error=on_error,
            retry_after_s=0.2,
        )
        failed = []
        try:
            for _ in range(2):
                try:
                    await shared.get("k")
                    failed.append(False)
                except Unavailable:
                    failed.append(True)
            redis_server.start()
            await asyncio.sleep(0.25)
            assert await shared.put("k", entry("back"))
            failed.append(await shared.get("k") is None)
        finally:
            await shared.aclose()
        return failed

    assert asyncio.run(main()) == [True, True, False]
    # The second call was skipped, not sent: one error counted.
    assert errors == 1


def test_a_redis_that_accepts_but_never_answers_costs_one_socket_timeout() -> None:
    errors = 0

    def on_error() -> None:
        nonlocal errors
        errors += 1

    # The kernel completes the handshake from the backlog; nothing ever reads or replies.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]

        async def main() -> list[str]:
            shared = RedisLevel(
                f"redis://127.0.0.1:{port}/0",
                ttl_s=10,
                jitter_s=1,
                socket_timeout_s=0.2,
                on_error=on_error,
            )
            seen = []
            try:
                for _ in range(3):
                    try:
                        await shared.get("k")
                        seen.append("answered")
                    except Unavailable:
                        seen.append("bypassed")
            finally:
                await shared.aclose()
            return seen

        assert asyncio.run(main()) == ["bypassed"] * 3
    assert errors == 1
