"""Asynchronous jobs: records, a queue, and a runner in the serving process.

``JobStore`` is the interface a queue backend implements (``SqliteJobStore``, the embedded
mode; ``RedisJobStore`` for a fleet); ``JobQueue`` is what the routes use; ``JobRunner``
executes jobs on the capacity sync requests leave idle; ``Jobs`` builds them from settings.
Nothing here imports :mod:`bgsvc.batches`, which builds on it.
"""

from bgsvc.jobs.model import JobError, JobRecord, JobStatus
from bgsvc.jobs.queue import Backends, JobQueue
from bgsvc.jobs.runner import JobRunner, RunnerConfig
from bgsvc.jobs.sqlite import SqliteJobStore
from bgsvc.jobs.store import JobStore, QueueStats

__all__ = [
    "Backends",
    "JobError",
    "JobQueue",
    "JobRecord",
    "JobRunner",
    "JobStatus",
    "JobStore",
    "QueueStats",
    "RunnerConfig",
    "SqliteJobStore",
]
