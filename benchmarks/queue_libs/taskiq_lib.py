"""taskiq with taskiq-redis's RedisStreamBroker (the one that acks; ListQueueBroker does not,
so a killed worker loses its message there)."""

from __future__ import annotations

import asyncio
import sys
import time
from importlib.metadata import version
from typing import Any

import redis
from taskiq_redis import RedisStreamBroker

from benchmarks.queue_libs import mark_async, redis_url, tuned

VERSION = f"taskiq {version('taskiq')}, taskiq-redis {version('taskiq-redis')}"
DEFAULTS = "RedisStreamBroker, ack when_saved, idle_timeout 600 s (XAUTOCLAIM)"
TUNING = "idle_timeout=8 s"
STREAM = "qb"
GROUP = "taskiq"

broker = RedisStreamBroker(
    url=redis_url(),
    queue_name=STREAM,
    consumer_group_name=GROUP,
    # "0", not "$": a group created by a late worker must still see jobs queued before it.
    consumer_id="0",
    idle_timeout=8000 if tuned() else 600_000,
)
_runner = asyncio.Runner()
_started = False
_client = redis.Redis.from_url(redis_url())


_marker: Any = None


@broker.task(task_name="qb.job", timeout=60)
async def job(tag: str, seconds: float) -> None:
    global _marker
    if _marker is None:
        import redis.asyncio

        _marker = redis.asyncio.Redis.from_url(redis_url())
    await mark_async(_marker, "start", tag)
    if seconds:
        await asyncio.sleep(seconds)
        await mark_async(_marker, "end", tag)


def worker_command(concurrency: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "taskiq",
        "worker",
        f"{__name__}:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        str(concurrency),
        "--no-configure-logging",
    ]


def enqueue(tag: str, seconds: float) -> Any:
    global _started
    if not _started:
        _runner.run(broker.startup())
        _started = True
    return _runner.run(job.kiq(tag, seconds))


def _group() -> dict[str, Any]:
    for group in _client.xinfo_groups(STREAM):
        if group["name"] in (GROUP, GROUP.encode()):
            return dict(group)
    return {}


def depth() -> int:
    # Redis 7 reports a consumer group's lag: entries not yet delivered to any consumer.
    lag = _group().get("lag")
    return int(lag) if lag is not None else int(_client.xlen(STREAM))


def oldest_age() -> float | None:
    last = _group().get("last-delivered-id", b"0-0")
    last = last.decode() if isinstance(last, bytes) else str(last)
    head = _client.xrange(STREAM, min=f"({last}", count=1)
    if not head:
        return None
    entry_id = head[0][0].decode()
    return time.time() - int(entry_id.split("-")[0]) / 1000.0


def cancel(handle: Any) -> bool:
    # No cancel of a queued message in taskiq or taskiq-redis.
    return False
