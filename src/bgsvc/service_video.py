"""A video through the model, frame by frame: the child decodes and encodes
(bgsvc.video), this process runs each frame through the same path as an animation's. A
cut video's segment is decoded by its own child and encoded by one the process keeps
(bgsvc.video.pool).

The frames' forward passes go through the scheduler one after another under the job's
one ticket, so a video holds one admission place and at most one inference slot at a
time. While frame n is in the model, frame n+1 is received and prepared and frame n-1 is
finished and handed back to the child, which encodes it and decodes ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from bgsvc.cache import CachedResult
from bgsvc.errors import BgsvcError, InvalidVideo, VideoTooLarge
from bgsvc.imaging.compose import Box
from bgsvc.imaging.decode import DecodedImage
from bgsvc.imaging.video import (
    VIDEO_CONTENT_TYPES,
    VideoInfo,
    VideoLimits,
    check_video_options,
    stream_params_ok,
)
from bgsvc.inference.scheduler import Ticket
from bgsvc.metrics import Metrics
from bgsvc.options import RemovalOptions
from bgsvc.pipeline import Predictor, RemovalResult, Remover, StagedPredictor
from bgsvc.tracing import span
from bgsvc.video import protocol
from bgsvc.video.pool import EncoderPool
from bgsvc.video.sandbox import ChildConfig, MediaChild, child_config, read_header, video_limits

T = TypeVar("T")
# Called with (frames done, frames in all) as a video's frames finish.
Progress = Callable[[int, int], Awaitable[None]]


class MatteStep(Protocol):
    """Stateful per-frame steps on the matte, called in frame order, each returning the
    matte to use (temporal smoothing across frames, imaging.temporal.VideoMattes):
    ``coarse`` on the model's matte on its own grid before the edge step enlarges it
    (``photo`` the frame at any size), ``fine`` on the matte at the output size after it
    (``photo`` the frame at that size). Both uint8."""

    def coarse(self, photo: np.ndarray, matte: np.ndarray) -> np.ndarray: ...

    def fine(self, photo: np.ndarray, matte: np.ndarray) -> np.ndarray: ...


# Frame timestamps passed on to an encoder lie within this (FFmpeg's are 64-bit).
MAX_PTS = 2**53
# Room in a joined file beyond its parts' bytes and the upload's (whose audio it takes):
# the container's own headers and index, a few bytes a frame.
JOIN_OVERHEAD_BYTES = 1 << 20


@dataclass(frozen=True)
class Parts:
    """A cut video's parts, in order: each segment's encoded frames, loaded when the join
    gets to it, and the frames they hold by this process's own count (its segments'
    records), which the joined file must hold too."""

    loads: list[Callable[[], Awaitable[bytes]]]
    frames: int


Segment = tuple[int, int | None]

Forward = Callable[
    [Ticket, Predictor, StagedPredictor | None, DecodedImage, np.ndarray | None],
    Awaitable[tuple[np.ndarray, float]],
]
InPool = Callable[[Callable[[], Any]], Awaitable[Any]]


def pixel_mode(options: RemovalOptions, fmt: str) -> str:
    """The finished frames' layout: the matte (L), a colour with no alpha (RGB), or a
    cutout (RGBA)."""
    if options.channels == "alpha":
        return "L"
    if fmt == "mp4" or (options.bg_color is not None and options.bg_color[3] == 255):
        return "RGB"
    return "RGBA"


class VideoProcessor:
    """Runs videos for a RemovalService (its forward pass and stage pool)."""

    def __init__(
        self,
        remover: Remover,
        forward: Forward,
        in_pool: InPool,
        metrics: Metrics,
        matte_step: Callable[[RemovalOptions], MatteStep | None] = lambda options: None,
        encoders: EncoderPool | None = None,
    ) -> None:
        self.remover = remover
        self.forward = forward
        self.in_pool = in_pool
        self.metrics = metrics
        # Where a segment's frames are encoded (None: by the child that decodes them).
        self.encoders = encoders
        # A fresh step per video (it keeps the previous frames' state), as the request's
        # options say; None: none.
        self.matte_step = matte_step

    async def process(
        self,
        ticket: Ticket,
        data: bytes,
        options: RemovalOptions,
        engine: Predictor,
        progress: Progress | None = None,
        segment: Segment | None = None,
        parts: Parts | None = None,
        paid_frames: int | None = None,
    ) -> RemovalResult:
        """The video through the model and encoded; or, for a ``segment`` (its first and
        end frame), only those frames, encoded without audio: a part; or, given ``parts``
        (the segments' parts, in order), the parts joined into the whole video, with no
        model run. No more than ``paid_frames`` go through the model (what the job was
        charged; None: as many as the header allows)."""
        fmt = check_video_options(options)
        mode = pixel_mode(options, fmt)
        settings = self.remover.settings
        budget = settings.max_output_pixels
        if options.max_output_pixels is not None:
            budget = min(budget, options.max_output_pixels)
        config = child_config(settings, "run", budget, fmt, mode)
        pooled = segment is not None and self.encoders is not None
        if segment is not None:
            config = replace(
                config, mode="part", first=segment[0], end=segment[1], encode=not pooled
            )
        if parts is not None:
            return await self._join(replace(config, mode="join"), data, fmt, parts, progress)
        started = time.perf_counter()
        async with contextlib.AsyncExitStack() as stack:
            child = await MediaChild.start(config, data)
            stack.push_async_callback(child.close)
            with span("decode"):
                info, size, stream = await self._header(child)
            timings = {"decode": time.perf_counter() - started}
            sink = child
            if pooled and self.encoders is not None:
                sink = await stack.enter_async_context(self.encoders.encoder())
                begin = {"format": fmt, "pixels": mode, "size": list(size), "stream": stream}
                await _begin(sink, begin)
            body, _frames = await self._frames(
                ticket,
                child,
                sink,
                info,
                size,
                options,
                mode,
                engine,
                progress,
                timings,
                paid_frames,
            )
        output = CachedResult(
            body=body,
            media_type=VIDEO_CONTENT_TYPES[fmt],
            format=fmt,
            width=size[0],
            height=size[1],
            box=Box(0, 0, 0, 0),
            model=engine.name,
            source_size=info.display_size,
        )
        return RemovalResult(output, timings)

    async def _join(
        self, config: ChildConfig, data: bytes, fmt: str, parts: Parts, progress: Progress | None
    ) -> RemovalResult:
        """The parts, sent one at a time, joined by a child into one file. The child
        parses the upload (for its audio) and may be one a decoder exploit has taken over:
        what it answers is held to what this process knows of the parts."""
        started = time.perf_counter()
        # Neither a part nor the whole can be larger than the child's own memory.
        limit = self.remover.settings.video_child_memory_bytes
        config = replace(config, max_part_bytes=limit)
        sent = 0
        child = await MediaChild.start(config, data)
        try:
            for load in parts.loads:
                part = await load()
                # A header's count is at times an estimate (duration x rate) past the real
                # one: a last segment that starts beyond the video's end succeeds with no
                # frame, and its part is an empty file, which no demuxer opens.
                if part:
                    sent += len(part)
                    await child.send("P", {}, part)
            await child.send("Q", {})
            with span("encode"):
                # The joined file is the parts' packets and the upload's audio, as they
                # are: a child announcing more is not read.
                most = min(limit, sent + len(data) + JOIN_OVERHEAD_BYTES)
                result = await child.receive(most)
        finally:
            await child.close()
        if result.kind != "D":
            raise InvalidVideo(f"The video joiner answered {result.kind!r}.")
        # The frames are charged, and shown, by the segments' records: a joined file
        # that holds another count is not the video its segments made.
        if result.meta.get("frames") != parts.frames:
            raise InvalidVideo(
                f"The video joiner counted {result.meta.get('frames')!r} frames in parts "
                f"that hold {parts.frames}."
            )
        frames = parts.frames
        if progress is not None:
            await progress(frames, frames)
        timings = {"encode": time.perf_counter() - started}
        output = CachedResult(
            body=result.payload,
            media_type=VIDEO_CONTENT_TYPES[fmt],
            format=fmt,
            width=0,
            height=0,
            box=Box(0, 0, 0, 0),
            model="",
            source_size=(0, 0),
        )
        return RemovalResult(output, timings)

    async def _header(self, child: MediaChild) -> tuple[VideoInfo, tuple[int, int], dict[str, Any]]:
        """The video's headers, its output size, and the stream parameters an encoder
        takes (video_codec.stream_params), checked here before any frame costs a forward
        pass, and again by the encoder that reads them."""
        head = await child.receive(0)
        if head.kind != "I":
            raise InvalidVideo(f"The video decoder answered {head.kind!r} first.")
        # A header it garbles is the file's 4xx, not a server error retried with a fresh
        # child each attempt.
        info, size = read_header(head.meta, VideoLimits(**child.config.limits))
        stream = head.meta.get("stream", {"time_base": None, "rate": None, "colour": {}})
        if not stream_params_ok(stream):
            raise InvalidVideo("The video decoder gave a broken header.")
        return info, size, stream

    async def _frames(
        self,
        ticket: Ticket,
        child: MediaChild,
        sink: MediaChild,
        info: VideoInfo,
        size: tuple[int, int],
        options: RemovalOptions,
        mode: str,
        engine: Predictor,
        progress: Progress | None,
        timings: dict[str, float],
        paid_frames: int | None = None,
    ) -> tuple[bytes, int]:
        remover = self.remover
        staged = engine if isinstance(engine, StagedPredictor) else None
        # The model path of a still or an animation frame; the composite is a PNG's (a
        # cutout, or a colour) or, for mp4, a JPEG's (on bg_color or white).
        compose_options = replace(options, format="jpg" if mode == "RGB" else "png")
        smoother = self.matte_step(options)
        frame_bytes = size[0] * size[1] * 3
        total = info.frames
        done = received = 0
        # The child stops at the header's count and margin; a child a decoder exploit
        # runs would not, and every frame it sends costs this process a forward pass.
        allowed = video_limits(remover.settings).allowed_frames(info.frames)
        if paid_frames is not None:
            # The header was this child's; the charge, the probe's at submission.
            allowed = min(allowed, paid_frames)
        if child.config.mode == "part":
            # A segment's count is its range's (the last one's: what the header leaves),
            # and its child is held to the range (the last one's: what the margin leaves
            # after its first frame): a frame past it costs a forward pass the video paid
            # for once.
            first, end = child.config.first, child.config.end
            total = max(0, (total if end is None else min(end, total)) - first)
            allowed = max(0, allowed - first if end is None else min(allowed, end) - first)
        timings.update(inference=0.0, queue=0.0)

        # A segment's child reports the frames it decodes before its range, no more
        # often than its protocol says: a child that keeps reporting is stopped. It may
        # drop each frame before its range twice: once after a seek to a key frame that
        # turned out to lie past the range's start, once more from the video's start.
        skips_allowed = 0
        if child.config.mode == "part":
            skips_allowed = 2 * child.config.first // protocol.SKIPPED_EVERY

        async def receive() -> tuple[DecodedImage, np.ndarray | None, int | None] | None:
            nonlocal received, skips_allowed
            message = await child.receive(frame_bytes)
            while message.kind == "S":
                skips_allowed -= 1
                if skips_allowed < 0:
                    raise InvalidVideo("The video decoder reported more frames than it skips.")
                message = await child.receive(frame_bytes)
            if message.kind == "N":
                return None
            if message.kind != "F" or len(message.payload) != frame_bytes:
                raise InvalidVideo("The video decoder sent a broken frame.")
            received += 1
            if received > allowed:
                raise VideoTooLarge(
                    f"The video decoder sent more frames than the header counts "
                    f"({info.frames}); at most {allowed} are taken."
                )
            pts = frame_pts(message.meta)
            pixels = np.frombuffer(message.payload, np.uint8).reshape(size[1], size[0], 3)
            image = DecodedImage(
                pixels=pixels,
                alpha=None,
                source_format="VIDEO",
                source_size=info.display_size,
                work_edge=remover.settings.max_edge,
            )
            if staged is None:
                return image, None, pts
            tensor = await self.in_pool(lambda: staged.preprocess(image.work_pixels))
            return image, tensor, pts

        def finish(image: DecodedImage, raw: np.ndarray) -> np.ndarray:
            with span("mask"):
                if staged is not None:
                    raw = staged.postprocess(raw, remover.matte_size(image, options))
                # The temporal steps see each frame's matte in frame order, before anything
                # is composed from it: on the model's grid (unless the matte is already at
                # the output size), then enlarged.
                if smoother is not None and raw.shape != image.pixels.shape[:2]:
                    raw = smoother.coarse(image.work_pixels, raw)
                matte = remover.full_matte(image, raw, options)
                if smoother is not None:
                    matte = smoother.fine(image.pixels, matte)
            rendered = remover.compose(image, matte, compose_options)
            pixels = rendered.pixels
            if pixels is not None and rendered.image.mode == mode and pixels.flags.c_contiguous:
                return pixels  # the cutout as composed: sent without another copy
            out = rendered.image if rendered.image.mode == mode else rendered.image.convert(mode)
            return np.asarray(out, dtype=np.uint8)

        async def finish_and_send(image: DecodedImage, raw: np.ndarray, pts: int | None) -> None:
            nonlocal done, total
            pixels = await self.in_pool(lambda: finish(image, raw))
            if sink is child:
                await child.send("R", {}, pixels.data)
            else:
                await _encode(sink, pixels, pts)
            done += 1
            total = max(total, done)
            if progress is not None:
                await progress(done, total)

        async def infer(image: DecodedImage, tensor: np.ndarray | None) -> np.ndarray:
            raw, seconds = await self.forward(ticket, engine, staged, image, tensor)
            timings["inference"] += seconds
            timings["queue"] += ticket.queue_seconds
            self.metrics.inference.labels(engine.name).observe(seconds)
            return raw

        if progress is not None:
            await progress(0, total)
        current = await receive()
        previous: tuple[DecodedImage, np.ndarray, int | None] | None = None
        while current is not None:
            image, tensor, pts = current
            steps: list[Awaitable[Any]] = [infer(image, tensor), receive()]
            if previous is not None:
                steps.append(finish_and_send(*previous))
            results = await together(steps)
            previous = (image, results[0], pts)
            current = results[1]
        if previous is not None:
            await finish_and_send(*previous)
        if progress is not None and done != total:
            # The header's count was an estimate (duration x rate): the real one stands.
            await progress(done, done)
        started = time.perf_counter()
        most = max_result_bytes(size, done, remover.settings.video_child_memory_bytes)
        with span("encode"):
            if sink is child:
                result = await child.receive(most)
            else:
                result = await _finish(sink, most, done)
        if result.kind != "D":
            raise InvalidVideo(f"The video encoder answered {result.kind!r}.")
        timings["encode"] = time.perf_counter() - started
        self.metrics.decode.observe(timings["decode"])
        self.metrics.encode.observe(timings["encode"])
        w, h = info.display_size
        self.metrics.input_megapixels.observe(done * w * h / 1e6)
        return result.payload, done


class EncoderFailed(RuntimeError):
    """An encoding child failed on frames this process composed: the service's fault,
    not the video's (the job is retried, with another child)."""


async def _begin(encoder: MediaChild, begin: dict[str, Any]) -> None:
    """A segment begun on an encoding child, which answers once its codec is open. Its
    own error there is the video's (a time base or rate the codec refuses, which came
    from the upload's headers); a child that died while kept, or does not answer, is
    the service's."""
    try:
        await encoder.send("B", begin)
        ready = await encoder.receive(0)
    except BgsvcError as exc:
        if encoder.answered_error:
            raise
        raise EncoderFailed(f"the encoding child failed to begin: {exc.message}") from exc
    if ready.kind != "A":
        raise EncoderFailed(f"the encoding child answered {ready.kind!r} to begin")


async def _encode(encoder: MediaChild, pixels: np.ndarray, pts: int | None) -> None:
    """One finished frame to an encoding child; a child that is gone or does not take it
    in time fails the segment as the service's fault, at this frame rather than after
    every frame left has run through the model."""
    try:
        await encoder.send("R", {"pts": pts}, pixels.data)
    except BgsvcError as exc:
        raise EncoderFailed(f"the encoding child failed: {exc.message}") from exc
    if encoder.gone:
        raise EncoderFailed("the encoding child is gone")


async def _finish(encoder: MediaChild, most: int, frames: int) -> protocol.Message:
    """The segment's encoded part, from an encoding child that has taken ``frames``."""
    try:
        await encoder.send("Q", {})
        result = await encoder.receive(most)
    except BgsvcError as exc:
        raise EncoderFailed(f"the encoding child failed: {exc.message}") from exc
    if result.kind != "D" or result.meta.get("frames") != frames:
        raise EncoderFailed(
            f"the encoding child answered {result.kind!r} for {result.meta.get('frames')!r} "
            f"of {frames} frames"
        )
    return result


def frame_pts(meta: dict[str, Any]) -> int | None:
    """A decoded frame's timestamp, as its child says, to pass on to the encoder: an
    integer within MAX_PTS, else None (the encoder then numbers it after the last)."""
    pts = meta.get("pts")
    return pts if type(pts) is int and -MAX_PTS < pts < MAX_PTS else None


def max_result_bytes(size: tuple[int, int], frames: int, child_memory: int) -> int:
    """The largest encoded video a child may send back: uncompressed RGBA and then some
    (no encoding of these frames is larger), and never more than the child's own memory
    (it encodes in memory), where one a decoder exploit runs could announce gigabytes
    for this process to read (a 1080p video's 900 frames allow 9.4 GB by pixels)."""
    return min(64 * 1024 * 1024 + size[0] * size[1] * 5 * max(1, frames), child_memory)


async def together(steps: list[Awaitable[Any]]) -> list[Any]:
    """Await ``steps`` at once; when one fails, the others are cancelled (a stage thread
    already running finishes on its own, as a timed-out request's does)."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            if not task.cancel() and not task.cancelled():
                # Read, so a second failure is not reported as never retrieved.
                task.exception()
        raise
