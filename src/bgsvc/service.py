"""The removal pipeline under the scheduler and the request budget: stages in a thread
pool, the forward pass through the scheduler, stage metrics, the result cache."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import numpy as np

from bgsvc.cache import CachedResult, MemoryLRUCache, ResultCache, cache_key
from bgsvc.cache.factory import build_tiers
from bgsvc.config import Settings
from bgsvc.config.output import OutputSettings
from bgsvc.errors import (
    RequestTimeout,
)
from bgsvc.imaging.animation import (
    Animation,
    animation_format,
    encode_frames,
)
from bgsvc.imaging.compose import Box, Rendered
from bgsvc.imaging.decode import DecodedImage
from bgsvc.imaging.encode import CONTENT_TYPES
from bgsvc.imaging.temporal import VideoMattes
from bgsvc.imaging.video import is_video
from bgsvc.inference.scheduler import Scheduler, Ticket
from bgsvc.metrics import Metrics
from bgsvc.options import RemovalOptions
from bgsvc.pipeline import Predictor, RemovalResult, Remover, StagedPredictor
from bgsvc.service_video import Parts, Progress, Segment, VideoProcessor, together
from bgsvc.stage_threads import StageThreads
from bgsvc.tracing import quiet, record, span
from bgsvc.video.pool import EncoderPool
from bgsvc.video.sandbox import child_config

T = TypeVar("T")

# Below this, hashing the upload for the cache key costs less than a thread hop.
_INLINE_HASH_BYTES = 1 << 20


def shaping_settings(settings: Settings) -> str:
    """The service's own settings that shape a result (the edge step's defaults, the
    encoders' and their qualities, the largest output), as they key it beside the request's
    options: nodes that share a cache with other settings, or a fleet part-way through a
    change of them, serve no result made under other ones."""
    shaping = {name: getattr(settings, name) for name in OutputSettings.model_fields}
    shaping["max_output_pixels"] = settings.max_output_pixels
    return json.dumps(shaping, sort_keys=True, default=str)


class RemovalService:
    """The pipeline under the scheduler and the request budget, with stage metrics and an
    optional result cache."""

    def __init__(
        self,
        remover: Remover,
        scheduler: Scheduler,
        metrics: Metrics,
        settings: Settings,
        cache: ResultCache | None = None,
    ) -> None:
        self.remover = remover
        self.scheduler = scheduler
        self.metrics = metrics
        self.timeout = settings.request_timeout_s
        self.max_frames = settings.sync_max_frames
        if cache is None and settings.result_cache_bytes > 0:
            cache = MemoryLRUCache(settings.result_cache_bytes)
        self.cache = cache
        self.tiers = build_tiers(cache, settings, metrics)
        self._shaping = shaping_settings(settings)
        self._evictions_seen = 0
        self.threads = StageThreads(
            settings.effective_intra_op_threads,
            settings.stage_thread_nice,
            lambda: self.scheduler.admitted,
        )
        self.video = VideoProcessor(
            remover,
            self._forward,
            self.threads.stage,
            metrics,
            matte_step=lambda options: VideoMattes() if remover.smooths(options) else None,
            # 0: a segment's child encodes its own frames, as a whole video's does.
            encoders=(
                EncoderPool(child_config(settings, "encode"), settings.video_encoder_keep_s)
                if settings.video_encoder_keep_s > 0
                else None
            ),
        )

    async def frame_count(
        self, data: bytes, options: RemovalOptions, max_frames: int | None = None
    ) -> int:
        """Remover.frame_count off the event loop (a GIF's frames are counted by walking
        its blocks); ``max_frames`` as for process()."""
        frames = self.max_frames if max_frames is None else max_frames
        run = self.threads.probe if is_video(data) else self.threads.stage
        return await run(lambda: self.remover.frame_count(data, options, frames))

    async def video_segments(
        self, data: bytes, options: RemovalOptions, paid_frames: int | None = None
    ) -> tuple[list[Segment], int]:
        """How a job's video is cut, and its frames by the header's count: ranges of at
        most BGSVC_VIDEO_SEGMENT_PIXELS and BGSVC_VIDEO_SEGMENT_FRAMES each (a segment is
        one attempt's work), the last running to the video's end, or to ``paid_frames``
        (what the job was charged). One range: not cut. Not a video: none."""
        if not is_video(data):
            return [], 0
        info = await self.threads.probe(lambda: self.remover.video_header(data, options))
        settings = self.remover.settings
        per = max(
            1,
            min(
                settings.video_segment_pixels // (info.width * info.height),
                settings.video_segment_frames,
            ),
        )
        # The header read here is a second child's: one a decoder exploit runs could count
        # more frames than the first one was charged for.
        frames = info.frames if paid_frames is None else min(info.frames, paid_frames)
        count = max(1, math.ceil(frames / per))
        cuts: list[Segment] = [(i * per, (i + 1) * per) for i in range(count)]
        cuts[-1] = (cuts[-1][0], paid_frames)
        return cuts, frames

    async def _forward(
        self,
        ticket: Ticket,
        engine: Predictor,
        staged: StagedPredictor | None,
        image: DecodedImage,
        tensor: np.ndarray | None,
    ) -> tuple[np.ndarray, float]:
        """One forward pass in the ticket's inference slot: the raw output and its seconds."""

        def run() -> tuple[np.ndarray, float]:
            # The scheduler has just measured the wait for this inference slot.
            record("queue", ticket.queue_seconds)
            t0 = time.perf_counter()
            with span("inference"):
                if staged is not None and tensor is not None:
                    out = staged.run(tensor)
                else:
                    out = engine.predict(image.work_rgb)
            return out, time.perf_counter() - t0

        return await self.scheduler.run(ticket, run, model=engine.name)

    async def warm_stages(self) -> float:
        """Remover.rehearse() once on a stage thread, as a lone request's stages run
        (edge step in bands): the kernel hands a process fresh memory page by page, and
        the first 2 MP request paid 0.2 s for it (at the median of seven starts, decode 95
        ms instead of 8 and the edge step 136 instead of 30); the memory stays with malloc
        for the requests after. Returns its seconds; no spans are made."""
        started = time.perf_counter()

        def run() -> None:
            with quiet(), self.threads.edge_step():
                self.remover.rehearse()

        await self.threads.stage(run)
        return time.perf_counter() - started

    def shutdown(self) -> None:
        """Stop the stage threads after the work they hold."""
        self.threads.shutdown()

    async def aclose(self) -> None:
        """Close network connections (the shared cache's) and the kept encoding
        children, on the serving loop."""
        if self.tiers is not None:
            await self.tiers.aclose()
        if self.video.encoders is not None:
            await self.video.encoders.aclose()

    async def process(
        self,
        ticket: Ticket,
        data: bytes,
        options: RemovalOptions,
        *,
        timeout_s: float | None = None,
        scope: str | None = None,
        max_frames: int | None = None,
        progress: Progress | None = None,
        segment: Segment | None = None,
        parts: Parts | None = None,
        paid_frames: int | None = None,
    ) -> RemovalResult:
        """Decode, infer and encode one request within the timeout (the request budget
        unless ``timeout_s`` says otherwise: jobs have their own); raises domain errors.
        ``scope`` names whose result cache it uses (the API key's name; None: the shared
        one, when keys are off); ``max_frames`` bounds an animation (None: a request's
        BGSVC_SYNC_MAX_FRAMES); ``progress`` hears of a video's frames as they finish;
        ``segment``, ``parts`` and ``paid_frames`` are a video job's
        (VideoProcessor.process)."""
        timeout = self.timeout if timeout_s is None else timeout_s
        frames = self.max_frames if max_frames is None else max_frames
        try:
            async with asyncio.timeout(timeout):
                if is_video(data):
                    # Not cached: a video is a job's, run once, and far larger than a photo.
                    engine = self.remover.engine_for(options)
                    return await self.video.process(
                        ticket, data, options, engine, progress, segment, parts, paid_frames
                    )
                return await self._process(ticket, data, options, scope, frames)
        except TimeoutError:
            raise RequestTimeout(f"The request did not finish within {timeout:g} s.") from None

    async def _process(
        self,
        ticket: Ticket,
        data: bytes,
        options: RemovalOptions,
        scope: str | None,
        max_frames: int,
    ) -> RemovalResult:
        engine = self.remover.engine_for(options)
        if self.tiers is None:
            return await self._compute(ticket, data, options, engine, max_frames)
        started = time.perf_counter()
        version = f"{getattr(engine, 'version', engine.name)}:{self._shaping}"
        if len(data) < _INLINE_HASH_BYTES:
            key = cache_key(data, options, engine.name, version, scope)
        else:
            key = await self.threads.stage(
                lambda: cache_key(data, options, engine.name, version, scope)
            )
        outcome = await self.tiers.get_or_compute(
            key, lambda: self._compute(ticket, data, options, engine, max_frames)
        )
        if outcome.computed is None:
            self.metrics.cache_lookups.labels("hit").inc()
            result = RemovalResult(outcome.entry, cache="HIT")
            result.timings = {"cache": time.perf_counter() - started}
            return result
        self.metrics.cache_lookups.labels("miss").inc()
        result = outcome.computed
        if self.cache is not None:
            stats = self.cache.stats()
            self.metrics.cache_bytes.set(stats.bytes)
            if stats.evictions > self._evictions_seen:
                self.metrics.cache_evictions.inc(stats.evictions - self._evictions_seen)
                self._evictions_seen = stats.evictions
        result.cache = "MISS"
        return result

    async def _compute(
        self,
        ticket: Ticket,
        data: bytes,
        options: RemovalOptions,
        engine: Predictor,
        max_frames: int,
    ) -> RemovalResult:
        if options.frames == "all":
            started = time.perf_counter()
            animation = await self.threads.stage(
                lambda: self.remover.decode_animation(data, options, max_frames)
            )
            if animation is not None:
                decode_s = time.perf_counter() - started
                return await self._compute_frames(ticket, animation, options, engine, decode_s)
        timings: dict[str, float] = {}
        staged = engine if isinstance(engine, StagedPredictor) else None

        def decode() -> tuple[DecodedImage, np.ndarray | None, float]:
            image = self.remover.decode(data, options)
            if staged is None:
                return image, None, 0.0
            # Preprocessing here, before the inference slot, overlaps another forward pass.
            t0 = time.perf_counter()
            with span("preprocess"):
                tensor = staged.preprocess(image.work_pixels)
            return image, tensor, time.perf_counter() - t0

        started = time.perf_counter()
        image, tensor, preprocess_s = await self.threads.stage(decode)
        timings["decode"] = time.perf_counter() - started - preprocess_s
        if staged is not None:
            timings["preprocess"] = preprocess_s
        self.metrics.decode.observe(timings["decode"])
        w, h = image.source_size
        self.metrics.input_megapixels.observe(w * h / 1e6)

        raw, timings["inference"] = await self._forward(ticket, engine, staged, image, tensor)
        timings["queue"] = ticket.queue_seconds
        self.metrics.inference.labels(engine.name).observe(timings["inference"])

        def finish() -> tuple[RemovalResult, float, float]:
            with self.threads.edge_step():
                return finish_here()

        def finish_here() -> tuple[RemovalResult, float, float]:
            t0 = time.perf_counter()
            with span("mask"):
                if staged is not None:
                    raw_matte = staged.postprocess(raw, self.remover.matte_size(image, options))
                else:
                    raw_matte = raw
                mask = self.remover.full_matte(image, raw_matte, options)
            mask_s = time.perf_counter() - t0
            result, encode_s = self.remover.finish(image, mask, options, engine.name)
            return result, mask_s, encode_s

        started = time.perf_counter()
        result, mask_s, timings["encode"] = await self.threads.stage(finish)
        if staged is not None:
            timings["mask"] = mask_s
        timings["postprocess"] = time.perf_counter() - started - timings["encode"] - mask_s
        self.metrics.postprocess.observe(timings["postprocess"])
        self.metrics.encode.observe(timings["encode"])
        result.timings = timings
        return result

    async def _compute_frames(
        self,
        ticket: Ticket,
        animation: Animation,
        options: RemovalOptions,
        engine: Predictor,
        decode_s: float,
    ) -> RemovalResult:
        """Every frame through the model and the same finish, then one file again.

        The frames' forward passes go through the scheduler one after another under the
        request's one ticket: an animation holds one admission place and at most one
        inference slot at a time, and other requests' passes interleave with its frames.
        Preparing the next frame and finishing the last one overlap the current pass."""
        staged = engine if isinstance(engine, StagedPredictor) else None
        frames: list[DecodedImage | None] = list(animation.frames)
        count = len(frames)
        timings = {"decode": decode_s, "queue": 0.0, "inference": 0.0, "postprocess": 0.0}
        self.metrics.decode.observe(decode_s)
        w, h = animation.frames[0].source_size
        self.metrics.input_megapixels.observe(count * w * h / 1e6)
        rendered: list[Rendered | None] = [None] * count

        def prepare(index: int) -> np.ndarray | None:
            image = frames[index]
            if staged is None or image is None:
                return None
            with span("preprocess"):
                return staged.preprocess(image.work_pixels)

        def finish(index: int, raw: np.ndarray) -> None:
            image = frames[index]
            if image is None:
                raise RuntimeError("a frame was finished twice")
            with span("mask"):
                if staged is not None:
                    raw = staged.postprocess(raw, self.remover.matte_size(image, options))
                mask = self.remover.full_matte(image, raw, options)
            rendered[index] = self.remover.compose(image, mask, options)
            # The decoded frame is done with: only its result is kept for the encode.
            frames[index] = None

        async def infer(index: int, tensor: np.ndarray | None) -> np.ndarray:
            image = frames[index]
            if image is None:
                raise RuntimeError("a frame was inferred after its finish")

            out, seconds = await self._forward(ticket, engine, staged, image, tensor)
            timings["queue"] += ticket.queue_seconds
            timings["inference"] += seconds
            self.metrics.inference.labels(engine.name).observe(seconds)
            return out

        async def staged_call(fn: Callable[[], T]) -> T:
            t0 = time.perf_counter()
            try:
                return await self.threads.stage(fn)
            finally:
                timings["postprocess"] += time.perf_counter() - t0

        tensor = await staged_call(lambda: prepare(0))
        previous: tuple[int, np.ndarray] | None = None
        for index in range(count):
            steps: list[Awaitable[object]] = [infer(index, tensor)]
            if index + 1 < count:
                steps.append(staged_call(functools.partial(prepare, index + 1)))
            if previous is not None:
                steps.append(staged_call(functools.partial(finish, *previous)))
            done = await together(steps)
            tensor = cast("np.ndarray | None", done[1]) if index + 1 < count else None
            previous = (index, cast("np.ndarray", done[0]))
        if previous is not None:
            await staged_call(functools.partial(finish, *previous))

        fmt = animation_format(options, animation.source_format)
        images = [r.image for r in rendered if r is not None]

        def encode_all() -> bytes:
            with span("encode"):
                return encode_frames(
                    images,
                    animation.durations,
                    animation.loop,
                    fmt,
                    options.quality,
                    self.remover.encode_settings,
                )

        started = time.perf_counter()
        body = await self.threads.stage(encode_all)
        timings["encode"] = time.perf_counter() - started
        self.metrics.postprocess.observe(timings["postprocess"])
        self.metrics.encode.observe(timings["encode"])
        output = CachedResult(
            body=body,
            media_type=CONTENT_TYPES[fmt],
            format=fmt,
            width=images[0].width,
            height=images[0].height,
            box=_union([r.box for r in rendered if r is not None]),
            model=engine.name,
            source_size=(w, h),
        )
        return RemovalResult(output, timings)


def _union(boxes: list[Box]) -> Box:
    """The smallest box around every frame's subject (empty when no frame has one)."""
    found = [b for b in boxes if b.width and b.height]
    if not found:
        return Box(0, 0, 0, 0)
    left = min(b.left for b in found)
    top = min(b.top for b in found)
    right = max(b.left + b.width for b in found)
    bottom = max(b.top + b.height for b in found)
    return Box(left, top, right - left, bottom - top)
