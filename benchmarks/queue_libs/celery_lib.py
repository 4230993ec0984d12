"""Celery 5 on the Redis transport (kombu)."""

from __future__ import annotations

import sys
import time
from importlib.metadata import version
from typing import Any

import redis
from celery import Celery

from benchmarks.queue_libs import mark_sync, redis_url, tuned

VERSION = f"celery {version('celery')}, kombu {version('kombu')}"
DEFAULTS = "acks on receipt (task_acks_late=False), visibility_timeout 3600 s"
TUNING = (
    "task_acks_late=True, task_reject_on_worker_lost=True, prefetch 1, "
    "broker visibility_timeout=10 s, unacked_restore_interval=1 s, unacked_restore_throttle=1"
)
QUEUE = "celery"

app = Celery("qb", broker=redis_url())
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if tuned():
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # The restore sweep otherwise runs every 10 x 10 s, whatever the visibility timeout.
        broker_transport_options={
            "visibility_timeout": 10,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )
_client = redis.Redis.from_url(redis_url())


@app.task(name="qb.job")
def job(tag: str, seconds: float) -> None:
    mark_sync(_client, "start", tag)
    if seconds:
        time.sleep(seconds)
        mark_sync(_client, "end", tag)


def worker_command(concurrency: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        __name__,
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=WARNING",
    ]


def enqueue(tag: str, seconds: float) -> Any:
    return job.apply_async((tag, seconds), time_limit=60)


def depth() -> int:
    return int(_client.llen(QUEUE))


def oldest_age() -> float | None:
    # Protocol 2 messages carry no send time; a before_task_publish header would be needed.
    return None


def cancel(handle: Any) -> bool:
    # revoke() is a broadcast to the workers listening now; none keep it unless --statedb.
    handle.revoke()
    return True
