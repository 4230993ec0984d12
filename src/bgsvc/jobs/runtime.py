"""The jobs capability of one serving process, built from the settings: records in the
store jobs.factory picks, results in bgsvc.storage, runs in this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from bgsvc.auth.base import KeyStore
from bgsvc.config import Settings
from bgsvc.jobs.endings import ItemFinished
from bgsvc.jobs.factory import db_path
from bgsvc.jobs.factory import open_store as open_job_store
from bgsvc.jobs.notify import Notifier
from bgsvc.jobs.queue import Backends, JobQueue
from bgsvc.jobs.runner import JobRunner, RunnerConfig
from bgsvc.options import RemovalOptions
from bgsvc.state import AppState
from bgsvc.storage import open_store


class Jobs:
    """Queue (for the routes), runner (a task of the lifespan) and webhook notifier."""

    def __init__(
        self,
        settings: Settings,
        state: AppState,
        parse_options: Callable[[dict[str, object]], RemovalOptions],
        *,
        poll_s: float = 0.2,
        key_store: KeyStore | None = None,
        item_finished: ItemFinished | None = None,
    ) -> None:
        self.settings = settings
        shared = bool(settings.redis_url)
        exists: Callable[[], bool] = db_path(settings).exists

        def open_backends() -> Backends:
            return Backends(open_job_store(settings), open_store(settings))

        if shared:
            # Jobs may be queued by any node: look from the start, and often (a poll is one
            # Lua call; a submission to this node wakes its runner at once anyway).
            exists = lambda: True  # noqa: E731
            poll_s = min(poll_s, 0.05)

        concurrency = state.scheduler.max_concurrency
        self.queue = JobQueue(
            open_backends,
            exists,
            queue_limit=settings.job_queue_limit,
            queue_limit_per_key=settings.job_queue_limit_per_key,
            concurrency=concurrency,
            keep_originals=settings.store_originals,
        )
        # The key store lets each key's webhooks be signed with its own secret.
        self.notifier = Notifier.from_settings(settings, state.metrics, key_store)
        config = RunnerConfig(
            timeout_s=settings.job_timeout_s,
            max_attempts=settings.job_max_attempts,
            ttl_s=settings.job_ttl_s,
            keep_originals=settings.store_originals,
            poll_s=poll_s,
            max_frames=settings.job_max_frames,
        )
        self.runner = JobRunner(
            self.queue,
            state.service,
            state.scheduler,
            state.metrics,
            config,
            parse_options=parse_options,
            serviceable=lambda: state.serviceable()[0] and not state.draining,
            notifier=self.notifier,
            item_finished=item_finished,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the runner on the running loop (from the lifespan)."""
        self._task = asyncio.create_task(self.runner.run())

    async def stop(self, grace_s: float) -> None:
        """Let running jobs finish within ``grace_s`` (the rest are queued again), then
        close the stores and the webhook client."""
        await self.runner.stop(grace_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.queue.aclose()
        if self.notifier is not None:
            await self.notifier.aclose()
