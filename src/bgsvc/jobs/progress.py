"""A running video's progress: what its frames report, written to the job store at most
every PROGRESS_EVERY_S, and the frames it ended with, which its credits are settled on."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from bgsvc.errors import JobsUnavailable
from bgsvc.jobs.base import JobStore

# A running video's progress is written to the job store at most this often.
PROGRESS_EVERY_S = 0.5

# A video with at most this many frames left to finish has its last forward passes running
# or waiting: the frame being finished is the one before the frame in the model.
FINISHING_FRAMES = 2


class VideoProgress:
    """One attempt's frames: ``report`` is what the video's frames call (done, in all);
    ``done`` is the last count reported, written or not (None: nothing reported, as for a
    still); ``write_last`` puts it on the record before the attempt ends. ``on_finishing``
    is called once, when the video is down to its last forward passes."""

    def __init__(
        self,
        jobs: JobStore,
        job_id: str,
        owner: str,
        on_finishing: Callable[[], None] | None = None,
    ) -> None:
        self._jobs = jobs
        self._on_finishing = on_finishing
        self._job_id = job_id
        self._owner = owner
        self._written = -PROGRESS_EVERY_S
        self.done: int | None = None
        self._total = 0
        # The last count the store has taken (a write the attempt's end cancelled has not).
        self._stored: int | None = None

    async def report(self, done: int, total: int) -> None:
        """A frame finished: written at the first and the last frame and at most every
        PROGRESS_EVERY_S between; a store that fails meanwhile costs the job nothing."""
        was_finishing = self.finishing
        self.done, self._total = done, total
        if self._on_finishing is not None and self.finishing and not was_finishing:
            self._on_finishing()
        now = time.monotonic()
        if 0 < done < total and now - self._written < PROGRESS_EVERY_S:
            return
        self._written = now
        await self._write(done)

    @property
    def finishing(self) -> bool:
        """Whether at most FINISHING_FRAMES of the frames reported are still to finish."""
        return self.done is not None and self._total - self.done <= FINISHING_FRAMES

    async def write_last(self) -> None:
        """The frames the attempt ended with, whatever the last report's fate: a write the
        attempt's end cancelled must not leave the record a frame short of the credits the
        job keeps."""
        if self.done is not None and self.done != self._stored:
            await self._write(self.done)

    async def _write(self, done: int) -> None:
        with contextlib.suppress(JobsUnavailable):
            await self._jobs.progress(self._job_id, self._owner, done, self._total)
            self._stored = done
