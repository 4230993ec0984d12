"""The removal pipeline, shared by the HTTP service and the CLI."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

import anyio.to_thread
import numpy as np
from PIL import Image

from bgsvc.config import Settings
from bgsvc.errors import NotReady, RequestTimeout
from bgsvc.imaging import refine
from bgsvc.imaging.compose import Box, combine_alpha, render
from bgsvc.imaging.decode import DecodedImage, DecodeLimits, decode
from bgsvc.imaging.encode import CONTENT_TYPES, EncodeSettings, encode
from bgsvc.inference.registry import select
from bgsvc.inference.scheduler import Scheduler, Ticket
from bgsvc.metrics import Metrics
from bgsvc.options import RemovalOptions


class Predictor(Protocol):
    """What the pipeline needs of a model (inference.engine.Engine)."""

    @property
    def name(self) -> str: ...

    def predict(self, rgb: Image.Image) -> np.ndarray: ...


@dataclass
class RemovalResult:
    """An encoded result and what the response headers report about it."""

    body: bytes
    media_type: str
    format: str
    width: int
    height: int
    box: Box
    model: str
    source_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)


class Remover:
    """The synchronous pipeline stages; each runs in a worker thread under the service."""

    def __init__(self, engines: dict[str, Predictor], settings: Settings) -> None:
        self.engines = engines
        self.settings = settings
        self._formats = frozenset(settings.allowed_formats)
        self._encode = EncodeSettings(
            png_compress_level=settings.png_compress_level,
            jpeg_quality=settings.jpeg_quality,
            webp_quality=settings.webp_quality,
        )

    def engine_for(self, options: RemovalOptions) -> Predictor:
        """The engine for the request's model (allow-list checked)."""
        name = select(options.model, self.settings)
        engine = self.engines.get(name)
        if engine is None:
            raise NotReady(f"Model {name!r} is not loaded yet.", retry_after=5)
        return engine

    def decode(self, data: bytes, options: RemovalOptions) -> DecodedImage:
        """Stage 1: guard and decode."""
        limits = DecodeLimits(
            allowed_formats=self._formats,
            max_pixels=self.settings.max_pixels,
            max_edge=self.settings.max_edge,
            max_output_pixels=options.max_output_pixels,
        )
        return decode(data, limits)

    def finish(
        self, image: DecodedImage, mask: np.ndarray, options: RemovalOptions
    ) -> tuple[RemovalResult, float]:
        """Stages 3 and 4: refine, composite, encode. Returns the result and encode seconds."""
        if options.post_process_mask:
            mask = refine.post_process_mask(mask)
        if options.alpha_matting:
            mask = refine.alpha_matting(
                image.rgb,
                mask,
                foreground_threshold=options.alpha_matting_foreground_threshold,
                background_threshold=options.alpha_matting_background_threshold,
                erode_size=options.alpha_matting_erode_size,
            )
        mask = combine_alpha(mask, image.alpha)
        rendered = render(image.rgb, mask, options)
        started = time.perf_counter()
        body = encode(rendered.image, rendered.format, options.quality, self._encode)
        result = RemovalResult(
            body=body,
            media_type=CONTENT_TYPES[rendered.format],
            format=rendered.format,
            width=rendered.image.width,
            height=rendered.image.height,
            box=rendered.box,
            model="",
            source_size=image.source_size,
        )
        return result, time.perf_counter() - started

    def remove(self, data: bytes, options: RemovalOptions) -> RemovalResult:
        """The whole pipeline in the calling thread (the CLI's path)."""
        engine = self.engine_for(options)
        image = self.decode(data, options)
        mask = engine.predict(image.rgb)
        result, _ = self.finish(image, mask, options)
        result.model = engine.name
        return result


class RemovalService:
    """The pipeline under the scheduler and the request budget, with stage metrics."""

    def __init__(
        self, remover: Remover, scheduler: Scheduler, metrics: Metrics, settings: Settings
    ) -> None:
        self.remover = remover
        self.scheduler = scheduler
        self.metrics = metrics
        self.timeout = settings.request_timeout_s

    async def process(self, ticket: Ticket, data: bytes, options: RemovalOptions) -> RemovalResult:
        """Decode, infer and encode one request within the timeout; raises domain errors."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._process(ticket, data, options)
        except TimeoutError:
            raise RequestTimeout(
                f"The request did not finish within {self.timeout:g} s."
            ) from None

    async def _process(self, ticket: Ticket, data: bytes, options: RemovalOptions) -> RemovalResult:
        engine = self.remover.engine_for(options)
        timings: dict[str, float] = {}

        started = time.perf_counter()
        image = await anyio.to_thread.run_sync(
            self.remover.decode, data, options, abandon_on_cancel=True
        )
        timings["decode"] = time.perf_counter() - started
        self.metrics.decode.observe(timings["decode"])
        w, h = image.source_size
        self.metrics.input_megapixels.observe(w * h / 1e6)

        def infer() -> tuple[np.ndarray, float]:
            t0 = time.perf_counter()
            mask = engine.predict(image.rgb)
            return mask, time.perf_counter() - t0

        mask, timings["inference"] = await self.scheduler.run(ticket, infer)
        timings["queue"] = ticket.queue_seconds
        self.metrics.inference.labels(engine.name).observe(timings["inference"])

        started = time.perf_counter()
        result, timings["encode"] = await anyio.to_thread.run_sync(
            self.remover.finish, image, mask, options, abandon_on_cancel=True
        )
        timings["postprocess"] = time.perf_counter() - started - timings["encode"]
        self.metrics.postprocess.observe(timings["postprocess"])
        self.metrics.encode.observe(timings["encode"])
        result.model = engine.name
        result.timings = timings
        return result
