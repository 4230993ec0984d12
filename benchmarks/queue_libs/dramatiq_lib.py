"""Dramatiq on its Redis broker (acks per message, heartbeats, dead-worker requeue)."""

from __future__ import annotations

import sys
import time
from importlib.metadata import version
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from benchmarks.queue_libs import mark_sync, redis_url, tuned

VERSION = f"dramatiq {version('dramatiq')}"
DEFAULTS = "heartbeat_timeout 60 s, maintenance_chance 1000 per million commands"
TUNING = "heartbeat_timeout=3 s, maintenance_chance=1,000,000 (every fetch), max_retries=2"

_kwargs: dict[str, Any] = {"url": redis_url(), "namespace": "qb"}
if tuned():
    _kwargs.update(heartbeat_timeout=3000, maintenance_chance=1_000_000)
broker = RedisBroker(**_kwargs)
dramatiq.set_broker(broker)
_client = redis.Redis.from_url(redis_url())
QUEUE_KEY = "qb:default"
MESSAGES_KEY = "qb:default.msgs"


@dramatiq.actor(queue_name="default", max_retries=2, time_limit=60_000)
def job(tag: str, seconds: float) -> None:
    mark_sync(_client, "start", tag)
    if seconds:
        time.sleep(seconds)
        mark_sync(_client, "end", tag)


def worker_command(concurrency: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dramatiq",
        __name__,
        "--processes",
        "1",
        "--threads",
        str(concurrency),
    ]


def enqueue(tag: str, seconds: float) -> Any:
    return job.send(tag, seconds)


def depth() -> int:
    return int(_client.llen(QUEUE_KEY))


def oldest_age() -> float | None:
    ids = _client.lrange(QUEUE_KEY, 0, 0)
    if not ids:
        return None
    raw = _client.hget(MESSAGES_KEY, ids[0])
    if raw is None:
        return None
    message = dramatiq.Message.decode(raw)
    return time.time() - message.message_timestamp / 1000.0


def cancel(handle: Any) -> bool:
    # No cancel API: the AbortMiddleware of dramatiq-abort (a separate package) would be needed.
    return False
