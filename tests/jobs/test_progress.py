"""A running video's progress: what says it is down to its last forward passes."""

from __future__ import annotations

import asyncio
from typing import cast

from bgsvc.jobs.base import JobStore
from bgsvc.jobs.progress import FINISHING_FRAMES, VideoProgress


class _Store:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int]] = []

    async def progress(self, job_id: str, owner: str, done: int, total: int) -> None:
        self.writes.append((done, total))


def _progress(calls: list[int]) -> VideoProgress:
    store = cast(JobStore, _Store())
    return VideoProgress(store, "job", "owner", on_finishing=lambda: calls.append(1))


def test_a_video_is_finishing_once_its_last_frames_are_all_that_is_left() -> None:
    calls: list[int] = []
    progress = _progress(calls)
    assert not progress.finishing  # nothing reported: a still, or a video not started
    states: list[bool] = []
    for done in range(13):
        asyncio.run(progress.report(done, 12))
        states.append(progress.finishing)
    assert states == [done >= 12 - FINISHING_FRAMES for done in range(13)]
    assert calls == [1]  # said once, when it became true


def test_a_video_shorter_than_its_last_frames_is_finishing_from_its_start() -> None:
    calls: list[int] = []
    progress = _progress(calls)
    asyncio.run(progress.report(0, FINISHING_FRAMES))
    assert progress.finishing and calls == [1]
    asyncio.run(progress.report(1, FINISHING_FRAMES))
    assert calls == [1]
