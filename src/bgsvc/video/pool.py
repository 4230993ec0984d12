"""Encoding children kept between a cut video's segments.

A segment's frames are decoded by a child of its own (it parses the upload), but encoded
by one of these: a child that only ever reads frames this process composed, so one may
serve segment after segment, of any job. Kept, its encoder's buffers stay mapped: a 1080p
VP9 encoder with an alpha stream takes about 300 MB, which a fresh process faults in
again for every segment (benchmarks/RESULTS.md measured up to 2.6 s of system time a
30-frame segment beside the forward passes, against 0.2 s in a process that had
encoded one before).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from bgsvc.video.sandbox import ChildConfig, MediaChild

# Idle encoding children a process keeps at most (each holds its encoder's memory).
MOST_IDLE = 2
# Segments one child encodes before it is replaced: its CPU limit covers that many.
SEGMENTS_PER_CHILD = 64
# A child left holding more than this after its segment is not kept: a 1080p VP9 encoder
# with alpha leaves about 0.4 GiB; a 4K one, or the whole frames of a ProRes or PNG
# segment kept in its heap, twice that and more.
KEEP_MOST_BYTES = 640 * 1024 * 1024


@dataclass
class _Kept:
    child: MediaChild
    segments: int = 0
    expiry: asyncio.TimerHandle | None = None


class EncoderPool:
    """Encoding children for segments: ``async with pool.encoder() as child`` gives one,
    kept for the next segment ``keep_s`` seconds when the block ends cleanly, and killed
    when it does not (an error, a timeout, a cancelled job: the child's state is then
    unknown). ``keep_s`` 0 starts a child for every segment."""

    def __init__(self, config: ChildConfig, keep_s: float) -> None:
        self.config = replace(
            config, mode="encode", cpu_s=config.cpu_s * SEGMENTS_PER_CHILD, max_upload_bytes=0
        )
        self.keep_s = keep_s
        self._idle: list[_Kept] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @contextlib.asynccontextmanager
    async def encoder(self) -> AsyncIterator[MediaChild]:
        kept = self._take() or _Kept(await MediaChild.start(self.config, b""))
        clean = False
        try:
            yield kept.child
            clean = True
        finally:
            kept.segments += 1
            if clean and self._keeps(kept):
                self._put(kept)
            else:
                await kept.child.close()

    def _take(self) -> _Kept | None:
        while self._idle:
            kept = self._idle.pop()
            if kept.expiry is not None:
                kept.expiry.cancel()
            if kept.child.proc.returncode is None:
                return kept
            self._close_soon(kept)
        return None

    def _keeps(self, kept: _Kept) -> bool:
        return (
            self.keep_s > 0
            and not self._closed
            and kept.segments < SEGMENTS_PER_CHILD
            and kept.child.proc.returncode is None
            and len(self._idle) < MOST_IDLE
            and resident_bytes(kept.child.proc.pid) <= KEEP_MOST_BYTES
        )

    def _put(self, kept: _Kept) -> None:
        kept.expiry = asyncio.get_running_loop().call_later(self.keep_s, self._expire, kept)
        self._idle.append(kept)

    def _expire(self, kept: _Kept) -> None:
        if kept in self._idle:
            self._idle.remove(kept)
            self._close_soon(kept)

    def _close_soon(self, kept: _Kept) -> None:
        task = asyncio.ensure_future(kept.child.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def idle(self) -> int:
        """Children kept and waiting."""
        return len(self._idle)

    async def aclose(self) -> None:
        """Close every kept child, and keep none from now on (the process is stopping)."""
        self._closed = True
        while self._idle:
            self._expire(self._idle[-1])
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def resident_bytes(pid: int) -> int:
    """The process's resident memory (Linux's /proc); unknown counts as too much."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return KEEP_MOST_BYTES + 1
