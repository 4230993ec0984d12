"""The threads a process's requests run their stages on, beside the event loop and the
inference slots.

- stage threads: decode, pre/post-processing and encode, never on the event loop;
- band helpers: a request alone in the process hands them bands of its edge step
  (bgsvc.imaging.bands), since the cores its forward pass has just used would otherwise
  stand idle;
- probe threads: a video's headers are read by a child process, and a thread here only
  waits for it, up to the step deadline. In the stage pool, a few uploads whose probing
  runs to its deadline would hold every stage thread, and every tenant's decodes behind
  them; here they queue among themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from bgsvc.imaging import bands

T = TypeVar("T")


def _stage_thread_init(nice: int) -> None:
    # Under saturation the decode/encode of queued requests competes with the forward
    # pass for the same cores; a niced thread still uses every idle cycle but yields to
    # ONNX Runtime's threads (Linux schedules niceness per thread).
    if nice > 0:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class StageThreads:
    """The three pools, sized by the process's inference threads (``threads``, its share
    of the cores); ``admitted`` counts the process's requests (the scheduler's tickets)."""

    def __init__(self, threads: int, nice: int, admitted: Callable[[], int]) -> None:
        self._admitted = admitted
        self._stages = ThreadPoolExecutor(
            max_workers=max(2, threads),
            thread_name_prefix="bgsvc-stage",
            initializer=_stage_thread_init,
            initargs=(nice,),
        )
        self._helpers = threads - 1
        self._edge_steps = 0
        self._edge_lock = threading.Lock()
        self._bands = ThreadPoolExecutor(
            max_workers=max(1, self._helpers),
            thread_name_prefix="bgsvc-band",
            initializer=_stage_thread_init,
            initargs=(nice,),
        )
        self._probes = ThreadPoolExecutor(
            max_workers=max(2, threads), thread_name_prefix="bgsvc-probe"
        )

    async def stage(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a stage thread."""
        return await self._run(self._stages, fn)

    async def probe(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a probe thread (it waits for a child process)."""
        return await self._run(self._probes, fn)

    @contextlib.contextmanager
    def edge_step(self) -> Iterator[None]:
        """Around a still's edge step on a stage thread: its loops go in bands over the
        helpers when its request is the only one in the process and no other edge step
        is running (one that a timed-out request left behind included); else on the
        calling thread alone, since under load the other requests' work fills those cores
        and bands would only contend."""
        with self._edge_lock:
            self._edge_steps += 1
            alone = self._edge_steps == 1 and self._admitted() <= 1
        try:
            with bands.spread(self._bands, self._helpers if alone else 0):
                yield
        finally:
            with self._edge_lock:
                self._edge_steps -= 1

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        # A cancelled await (request timeout) abandons the thread's work rather than
        # waiting for it; the thread finishes on its own. run_in_executor does not carry
        # contextvars: the copy gives the thread the request id and the current span.
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(pool, context.run, fn)

    def shutdown(self) -> None:
        """Stop the threads after the work they hold (the stages first: their edge steps
        may still hand bands to the helpers)."""
        self._stages.shutdown(wait=True, cancel_futures=True)
        self._bands.shutdown(wait=True, cancel_futures=True)
        self._probes.shutdown(wait=True, cancel_futures=True)
