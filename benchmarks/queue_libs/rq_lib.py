"""RQ on Redis: a forking worker (one work horse process per job), WorkerPool for more."""

from __future__ import annotations

import sys
import time
from importlib.metadata import version
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job

from benchmarks.queue_libs import mark_sync, redis_url, tuned

VERSION = f"rq {version('rq')}"
DEFAULTS = "no retry, job_timeout 180 s, maintenance (abandoned-job cleanup) every 600 s"
TUNING = "Retry(max=2), job_timeout=8 s, worker maintenance_interval=1 s"

_client = redis.Redis.from_url(redis_url())
queue = Queue("qb", connection=_client)


def job(tag: str, seconds: float) -> None:
    mark_sync(_client, "start", tag)
    if seconds:
        time.sleep(seconds)
        mark_sync(_client, "end", tag)


def worker_command(concurrency: int) -> list[str]:
    return [sys.executable, "-m", __name__, str(concurrency)]


def enqueue(tag: str, seconds: float) -> Job:
    if tuned():
        return queue.enqueue(job, tag, seconds, job_timeout=8, retry=Retry(max=2))
    return queue.enqueue(job, tag, seconds)


def depth() -> int:
    return queue.count


def oldest_age() -> float | None:
    ids = queue.get_job_ids(0, 1)
    if not ids:
        return None
    head = queue.fetch_job(ids[0])
    if head is None or head.enqueued_at is None:
        return None
    return time.time() - head.enqueued_at.timestamp()


def cancel(handle: Any) -> bool:
    handle.cancel()
    return True


def _main(concurrency: int) -> None:
    from rq import Worker
    from rq.worker_pool import WorkerPool

    interval = 1 if tuned() else 600
    if concurrency == 1:
        Worker([queue], connection=_client, maintenance_interval=interval).work()
    else:
        WorkerPool([queue], connection=_client, num_workers=concurrency).start()


if __name__ == "__main__":
    _main(int(sys.argv[1]))
