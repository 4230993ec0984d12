"""Asynchronous jobs: records, a queue, and a runner in the serving process.

The store interface in base.py, the choice in factory.py, one subpackage per technology
(sqlite/, the embedded mode; redis/, a fleet). ``JobQueue`` is what the routes use;
``JobRunner`` executes jobs on the capacity sync requests leave idle; ``Jobs`` (runtime.py)
builds them from settings. Nothing here imports :mod:`bgsvc.batches`, which builds on it.
"""

from bgsvc.jobs.base import JobStore, QueueStats
from bgsvc.jobs.model import JobError, JobRecord, JobStatus
from bgsvc.jobs.queue import Backends, JobQueue
from bgsvc.jobs.runner import JobRunner, RunnerConfig
from bgsvc.jobs.sqlite.store import SqliteJobStore

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
