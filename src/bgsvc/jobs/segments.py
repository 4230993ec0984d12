"""A video cut into segments: the segment jobs a runner queues for it, what each of them
runs, and what its stitch reads back. The runner (bgsvc.jobs.runner) decides when; the
stores (bgsvc.jobs.base.JobStore.split) make each step atomic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from bgsvc.errors import JobExpired, status_of
from bgsvc.jobs.base import JobStore
from bgsvc.jobs.model import JobError, JobRecord, JobStatus, segment_id
from bgsvc.storage import ResultStore

if TYPE_CHECKING:
    # Types only: the job routes read progress through this module, and need none of
    # the video pipeline loaded for it.
    from bgsvc.service_video import Segment

# Where a segment job's options say which frames it runs: [first, end or None].
SEGMENT_OPTION = "_segment"


def pop_segment(options: dict[str, Any]) -> tuple[dict[str, Any], Segment | None]:
    """A job's request parameters, and its frame range if it is a segment."""
    params = dict(options)
    cut = params.pop(SEGMENT_OPTION, None)
    return params, None if cut is None else (int(cut[0]), cut[1])


def segment_records(record: JobRecord, cuts: list[Segment]) -> list[JobRecord]:
    """The queued jobs of ``record``'s segments, one per frame range, in order."""
    return [
        JobRecord(
            id=segment_id(record.id, index),
            status=JobStatus.QUEUED,
            # Just after the parent, in order: the tie-break among jobs of one turn.
            created_at=record.created_at + (index + 1) * 1e-6,
            options={**record.options, SEGMENT_OPTION: [first, end]},
            input_key=record.input_key,
            fingerprint=record.fingerprint,
            client=record.client,
            tenant=record.tenant,
            parent=record.id,
        )
        for index, (first, end) in enumerate(cuts)
    ]


def frames_of(segments: list[JobRecord]) -> int:
    """The frames these segments ran through the model."""
    return sum(segment.frames_done or 0 for segment in segments)


async def frames_run(jobs: JobStore, job_id: str) -> int:
    """The frames a cut video's segments ran through the model: what it keeps of its
    credits however it ends, and its progress until it is stitched."""
    return frames_of(await jobs.segments_of(job_id))


def failure(record: JobRecord, segments: list[JobRecord]) -> JobError | None:
    """Why the video cannot be stitched (a segment that failed, or is gone), or None."""
    if len(segments) == record.segments and all(s.status is JobStatus.SUCCEEDED for s in segments):
        return None
    failed = next((s for s in segments if s.status is not JobStatus.SUCCEEDED), None)
    if failed is not None and failed.error is not None:
        return failed.error
    what = "expired" if failed is None else failed.status.value
    return JobError(JobExpired.code, f"A segment of the video {what}.")


def kept_credits(error: JobError, segments: list[JobRecord]) -> int:
    """The credits a cut video that failed keeps: its segments' frames when its file
    failed it (a 4xx: a broken part, or it expired waiting), none when the service did
    (a 5xx, an attempt past its time), as a video run whole gives back."""
    return frames_of(segments) if status_of(error.code) < 500 else 0


def part_loaders(
    results: ResultStore, segments: list[JobRecord]
) -> list[Callable[[], Awaitable[bytes]]]:
    """Each segment's part, read from the result store when the stitch gets to it."""

    def loader(key: str) -> Callable[[], Awaitable[bytes]]:
        async def load() -> bytes:
            found = await anyio.to_thread.run_sync(results.get, key)
            if found is None:
                raise RuntimeError(f"the part {key} of a cut video is gone")
            return found.data

        return load

    return [loader(str(segment.result_key)) for segment in segments]


async def delete_parts(jobs: JobStore, results: ResultStore, job_id: str) -> None:
    """The segments' parts, once the video has ended (its own result stays)."""
    for segment in await jobs.segments_of(job_id):
        if segment.result_key:
            await anyio.to_thread.run_sync(results.delete, segment.result_key)
