"""One small module per job-queue library, each behind the same module-level interface,
so that benchmarks/queues.py measures them all with one driver.

Every module reads ``QB_REDIS_URL`` and ``QB_TUNED`` at import, because its worker runs in a
separate process that imports the same module to find the job function. Each provides:

* ``VERSION``, ``DEFAULTS`` and ``TUNING`` (the settings of the two kill -9 runs, in words);
* ``worker_command(concurrency) -> list[str]``: a worker process for that module;
* ``enqueue(tag, seconds) -> handle``: queue one job that marks its start (and its end when
  it sleeps), so every library is timed by the same Redis list rather than by its own API;
* ``depth() -> int``, ``oldest_age() -> float | None`` (None: the library does not keep the
  enqueue time where it can be read), ``cancel(handle) -> bool`` (what the API answered).
"""

from __future__ import annotations

import importlib
import os
import time
from types import ModuleType
from typing import Any

LIBRARIES = ("celery", "rq", "dramatiq", "arq", "saq", "taskiq")
MARKS = "qb:marks"


def redis_url() -> str:
    return os.environ["QB_REDIS_URL"]


def tuned() -> bool:
    return os.environ.get("QB_TUNED") == "1"


def mark_line(event: str, tag: str) -> str:
    return f"{event} {tag} {time.time():.6f}"


def mark_sync(client: Any, event: str, tag: str) -> None:
    client.rpush(MARKS, mark_line(event, tag))


async def mark_async(client: Any, event: str, tag: str) -> None:
    await client.rpush(MARKS, mark_line(event, tag))


def load(name: str) -> ModuleType:
    if name not in LIBRARIES:
        raise ValueError(f"unknown library {name!r}; one of {', '.join(LIBRARIES)}")
    return importlib.import_module(f"benchmarks.queue_libs.{name}_lib")
