"""arq (asyncio) on Redis. arq 0.26+ pins redis<6, so the version that installs beside the
service's redis 8 is 0.25."""

from __future__ import annotations

import asyncio
import sys
import time
from importlib.metadata import version
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job

from benchmarks.queue_libs import mark_async, redis_url, tuned

VERSION = f"arq {version('arq')}"
DEFAULTS = "job_timeout 300 s, max_tries 5, poll_delay 0.5 s"
TUNING = "job_timeout=8 s, poll_delay=0.05 s, allow_abort_jobs"
QUEUE = "arq:queue"

_settings = RedisSettings.from_dsn(redis_url())
_runner = asyncio.Runner()
_pool: ArqRedis | None = None


async def job(ctx: dict[str, Any], tag: str, seconds: float) -> None:
    await mark_async(ctx["redis"], "start", tag)
    if seconds:
        await asyncio.sleep(seconds)
        await mark_async(ctx["redis"], "end", tag)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [job]
    redis_settings = _settings
    allow_abort_jobs = True
    job_timeout = 8 if tuned() else 300
    poll_delay = 0.05 if tuned() else 0.5


def worker_command(concurrency: int) -> list[str]:
    return [sys.executable, "-m", __name__, str(concurrency)]


def _get_pool() -> ArqRedis:
    global _pool
    if _pool is None:
        _pool = _runner.run(create_pool(_settings))
    return _pool


def enqueue(tag: str, seconds: float) -> Job | None:
    return _runner.run(_get_pool().enqueue_job("job", tag, seconds))


def depth() -> int:
    return int(_runner.run(_get_pool().zcard(QUEUE)))


def oldest_age() -> float | None:
    # The queue is a sorted set scored by the time each job may start, in ms.
    head = _runner.run(_get_pool().zrange(QUEUE, 0, 0, withscores=True))
    if not head:
        return None
    return time.time() - float(head[0][1]) / 1000.0


def cancel(handle: Any) -> bool:
    try:
        return bool(_runner.run(handle.abort(timeout=1)))
    except TimeoutError:
        # abort() waits for a worker to confirm; with none running the request still stands.
        return True


if __name__ == "__main__":
    from arq.worker import run_worker

    WorkerSettings.max_jobs = int(sys.argv[1])  # type: ignore[attr-defined]
    run_worker(WorkerSettings)  # type: ignore[arg-type]
