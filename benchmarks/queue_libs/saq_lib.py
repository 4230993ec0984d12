"""SAQ (asyncio) on Redis."""

from __future__ import annotations

import asyncio
import sys
import time
from importlib.metadata import version
from typing import Any

from saq import Job, Queue, Worker

from benchmarks.queue_libs import mark_async, redis_url, tuned

VERSION = f"saq {version('saq')}"
DEFAULTS = "job timeout 10 s, heartbeat off, retries 1 (one attempt), sweep every 60 s"
TUNING = "timeout=8 s, retries=3, sweep every 1 s (heartbeat needs job.update() calls from the job)"

_runner = asyncio.Runner()
_queue: Queue | None = None


def _get_queue() -> Queue:
    global _queue
    if _queue is None:
        _queue = Queue.from_url(redis_url(), name="qb")
        _runner.run(_queue.connect())
    return _queue


async def job(ctx: dict[str, Any], *, tag: str, seconds: float) -> None:
    await mark_async(ctx["job"].queue.redis, "start", tag)
    if seconds:
        await asyncio.sleep(seconds)
        await mark_async(ctx["job"].queue.redis, "end", tag)


def worker_command(concurrency: int) -> list[str]:
    return [sys.executable, "-m", __name__, str(concurrency)]


def enqueue(tag: str, seconds: float) -> Job | None:
    extra: dict[str, Any] = {"timeout": 8, "retries": 3} if tuned() else {}
    return _runner.run(_get_queue().enqueue("job", tag=tag, seconds=seconds, **extra))


def depth() -> int:
    return int(_runner.run(_get_queue().count("queued")))


def oldest_age() -> float | None:
    queue = _get_queue()
    keys = _runner.run(queue.redis.lrange(queue.namespace("queued"), 0, 0))
    if not keys:
        return None
    # Entries are job ids ("saq:job:<queue>:<key>"); Queue.job() takes the key.
    head = _runner.run(queue.job(keys[0].decode().rsplit(":", 1)[-1]))
    return None if head is None else time.time() - head.queued / 1000.0


def cancel(handle: Any) -> bool:
    _runner.run(_get_queue().abort(handle, "canceled"))
    return True


async def _work(concurrency: int) -> None:
    queue = Queue.from_url(redis_url(), name="qb")
    timers: Any = {"sweep": 1} if tuned() else None
    await Worker(queue, [job], concurrency=concurrency, timers=timers).start()


if __name__ == "__main__":
    asyncio.run(_work(int(sys.argv[1])))
