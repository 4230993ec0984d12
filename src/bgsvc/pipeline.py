"""The removal pipeline: decode, matte, edges, composite, encode. Called stage by stage
by bgsvc.service under the scheduler, and whole by the CLI."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from bgsvc.cache import CachedResult
from bgsvc.config import Settings
from bgsvc.errors import (
    InvalidImage,
    InvalidParameter,
    MissingImage,
    NotReady,
    TooManyPixels,
    UnsupportedFormat,
    VideoNeedsJob,
)
from bgsvc.imaging import edges, refine
from bgsvc.imaging.animation import (
    Animation,
    animation_format,
    decode_frames,
    probe_animation,
)
from bgsvc.imaging.compose import Recolour, Rendered, combine_alpha, render
from bgsvc.imaging.decode import DRAFTED_FORMATS, DecodedImage, DecodeLimits, decode, open_image
from bgsvc.imaging.encode import CONTENT_TYPES, EncodeSettings, encode, encode_zip
from bgsvc.imaging.place import place
from bgsvc.imaging.video import VIDEO_FORMATS, VideoInfo, check_video_options, is_video
from bgsvc.inference.registry import select
from bgsvc.options import RemovalOptions
from bgsvc.tracing import span
from bgsvc.video.sandbox import child_config, video_limits
from bgsvc.video.sandbox import probe as probe_video


class Predictor(Protocol):
    """What the pipeline needs of a model (inference.engine.Engine)."""

    @property
    def name(self) -> str: ...

    def predict(self, rgb: Image.Image) -> np.ndarray: ...


@runtime_checkable
class StagedPredictor(Protocol):
    """A predictor whose stages can run apart (Engine): pre- and post-processing then run
    outside the inference slot, overlapping other requests' forward passes."""

    @property
    def name(self) -> str: ...

    def preprocess(self, rgb: Image.Image | np.ndarray) -> np.ndarray: ...

    def run(self, tensor: np.ndarray) -> np.ndarray: ...

    def postprocess(self, raw: np.ndarray, size: tuple[int, int] | None) -> np.ndarray: ...

    def predict(self, rgb: Image.Image) -> np.ndarray: ...


@dataclass
class RemovalResult:
    """One request's answer: the encoded output (what a cache keeps) and how it was made."""

    output: CachedResult
    timings: dict[str, float] = field(default_factory=dict)
    # "HIT" or "MISS" when a result cache is on (the X-Cache header), else None.
    cache: str | None = None


class EdgeStep(Protocol):
    """The edge step's two full-resolution calls, with imaging.edges' contracts: that
    module itself (the CPU), or inference.edge_graph.EdgeGraphs (ONNX graphs, for a GPU)."""

    def upscale_matte(
        self, matte: np.ndarray, guide: np.ndarray, *, refine: bool = ..., work_edge: int = ...
    ) -> np.ndarray: ...

    def decontaminate(
        self,
        pixels: np.ndarray,
        alpha: np.ndarray,
        *,
        work_edge: int = ...,
        out: np.ndarray | None = ...,
    ) -> np.ndarray: ...


# The most pixels of a background image that is decoded whole (not a JPEG) behind any
# result, however small: a 4K picture.
BACKGROUND_FLOOR_PIXELS = 3840 * 2160


class Remover:
    """The synchronous pipeline stages; each runs in a worker thread under the service."""

    def __init__(self, engines: dict[str, Predictor], settings: Settings) -> None:
        self.engines = engines
        self.settings = settings
        # Replaced by the lifespan when BGSVC_EDGE_STEP asks for the graphs.
        self.edge_step: EdgeStep = edges
        self._formats = frozenset(settings.allowed_formats)
        self._encode = EncodeSettings(
            png_encoder=settings.png_encoder,
            png_compress_level=settings.png_compress_level,
            png_zlib_strategy=settings.png_zlib_strategy,
            jpeg_quality=settings.jpeg_quality,
            webp_quality=settings.webp_quality,
            webp_method=settings.webp_method,
            webp_alpha_quality=settings.webp_alpha_quality,
        )

    @property
    def encode_settings(self) -> EncodeSettings:
        """The encoders' settings (format defaults, the PNG writer)."""
        return self._encode

    def engine_for(self, options: RemovalOptions) -> Predictor:
        """The engine for the request's model (allow-list checked)."""
        name = select(options.model, self.settings)
        engine = self.engines.get(name)
        if engine is None:
            raise NotReady(f"Model {name!r} is not loaded yet.", retry_after=5)
        return engine

    def _limits(self, options: RemovalOptions) -> DecodeLimits:
        budget = self.settings.max_output_pixels
        if options.max_output_pixels is not None:
            budget = min(budget, options.max_output_pixels)
        return DecodeLimits(
            allowed_formats=self._formats,
            max_pixels=self.settings.max_pixels,
            max_edge=self.settings.max_edge,
            max_output_pixels=budget,
        )

    def _background(
        self, options: RemovalOptions, limits: DecodeLimits, size: tuple[int, int]
    ) -> Image.Image | None:
        if options.bg_image is None:
            return None
        # Decoded here, before the inference slot: a bad background fails fast. It is
        # scaled to cover the result, so twice the result's pixels is all it needs (a
        # different aspect ratio is cropped). A JPEG is decoded at about that size; other
        # formats only whole, so those are held to four times the result, or a 4K picture
        # whatever the result: a small PNG or WebP of 25 MP behind a small photo was a
        # full second decode, for one credit.
        budget = limits.max_output_pixels or limits.max_pixels
        backdrop = replace(limits, max_output_pixels=min(budget, 2 * size[0] * size[1]))
        try:
            header = open_image(options.bg_image, backdrop)
            room = max(4 * size[0] * size[1], BACKGROUND_FLOOR_PIXELS)
            w, h = header.size
            if header.format not in DRAFTED_FORMATS and w * h > room:
                raise TooManyPixels(
                    f"it is {w}x{h} ({w * h} pixels) and, behind a result of {size[0]}x"
                    f"{size[1]}, at most {room} are decoded; send it smaller, or as a JPEG "
                    "(decoded at about the size used)."
                )
            return decode(options.bg_image, backdrop).rgb
        except (MissingImage, InvalidImage, UnsupportedFormat, TooManyPixels) as exc:
            raise type(exc)(f"The background image: {exc.message}") from exc

    def decode(self, data: bytes, options: RemovalOptions) -> DecodedImage:
        """Stage 1: guard and decode."""
        if is_video(data):
            # The service hands videos to bgsvc.service_video; this is the still path.
            raise VideoNeedsJob("A video is not a photo: send it to POST /jobs.")
        if options.format in VIDEO_FORMATS and options.format != "zip":
            raise InvalidParameter(f"format={options.format} is for videos; use png, webp or jpg.")
        limits = self._limits(options)
        with span("decode"):
            image = decode(data, limits)
            background = self._background(options, limits, image.size)
            if background is not None:
                image = replace(image, background=background)
            return image

    def frame_count(self, data: bytes, options: RemovalOptions, max_frames: int) -> int:
        """The frames the request will run (1 for a still or a first-frame dialect), read
        from the file's header within the frame and pixel budgets: what it is charged. A
        video's headers are read by a child process (bgsvc.video), held to the video
        limits; its count is the most frames its decode may deliver (the header's and the
        margin past an estimate): held at submission, settled when the job ends."""
        if is_video(data):
            fmt = check_video_options(options)
            budget = self._limits(options).max_output_pixels
            info, _ = probe_video(child_config(self.settings, "probe", budget, fmt), data)
            return video_limits(self.settings).allowed_frames(info.frames)
        if options.frames != "all":
            return 1
        probe = probe_animation(data, self._limits(options), max_frames)
        return 1 if probe is None else probe.count

    def video_header(self, data: bytes, options: RemovalOptions) -> VideoInfo:
        """A video's headers, read by a child within the video limits."""
        fmt = check_video_options(options)
        budget = self._limits(options).max_output_pixels
        info, _ = probe_video(child_config(self.settings, "probe", budget, fmt), data)
        return info

    def decode_animation(
        self, data: bytes, options: RemovalOptions, max_frames: int
    ) -> Animation | None:
        """Stage 1 for a request that takes every frame: the animation, checked against
        the frame and pixel budgets before any frame is decoded; None for a still."""
        limits = self._limits(options)
        with span("decode"):
            probe = probe_animation(data, limits, max_frames)
            if probe is None:
                return None
            # The request's options are checked before any frame is decoded.
            if options.crop:
                # Each frame's subject has its own box: frames cropped apart would not
                # make one animation.
                raise InvalidParameter("crop does not apply to an animation.")
            animation_format(options, probe.kind)
            animation = decode_frames(probe, limits)
            background = self._background(options, limits, animation.frames[0].size)
            if background is not None:
                frames = [replace(f, background=background) for f in animation.frames]
                animation = replace(animation, frames=frames)
            return animation

    def refines(self, options: RemovalOptions) -> bool:
        """Whether the matte is enlarged along the photo's edges (the request's say, else
        BGSVC_REFINE)."""
        return self.settings.refine if options.refine is None else options.refine

    def smooths(self, options: RemovalOptions) -> bool:
        """Whether a video's mattes are smoothed from frame to frame (the request's say,
        else BGSVC_VIDEO_SMOOTHING)."""
        return self.settings.video_smoothing if options.smooth is None else options.smooth

    def decontaminates(self, options: RemovalOptions) -> bool:
        """Whether soft pixels get the subject's estimated colour (the request's say, else
        BGSVC_DECONTAMINATE); never for a matte alone."""
        wanted = (
            self.settings.decontaminate if options.decontaminate is None else options.decontaminate
        )
        return wanted and options.channels == "rgba"

    def matte_size(self, image: DecodedImage, options: RemovalOptions) -> tuple[int, int] | None:
        """The size the engine's matte is made at: the model's own when the refinement
        enlarges it (it fits the photo on the matte's grid, where both are equally
        coarse), else the result's at once (one bilinear resize)."""
        return None if self.refines(options) else image.size

    def full_matte(
        self, image: DecodedImage, matte: np.ndarray, options: RemovalOptions
    ) -> np.ndarray:
        """The engine's matte at the result's size, refined along the photo's edges."""
        return self.edge_step.upscale_matte(
            matte, image.pixels, refine=self.refines(options), work_edge=self.settings.max_edge
        )

    def compose(self, image: DecodedImage, mask: np.ndarray, options: RemovalOptions) -> Rendered:
        """Stage 3: refine and composite (``mask`` at the result's size)."""
        with span("compose"):
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
            if options.roi is not None:
                mask = options.roi.apply(mask, image.size, image.source_size)
            mask = combine_alpha(mask, image.alpha)
            recolour = self._recolour(options)
            budget = self._limits(options).max_output_pixels
            if options.placement is not None:
                placed = None
                if recolour is not None:
                    pixels = recolour(image.pixels, mask, None)
                    placed = None if pixels is image.pixels else Image.fromarray(pixels)
                placed = image.rgb if placed is None else placed
                placed, mask = place(placed, mask, options.placement)
                rendered = render(
                    placed, mask, options, background=image.background, max_pixels=budget
                )
            else:
                rendered = render(
                    None,  # made from the pixels only if the output needs a Pillow image
                    mask,
                    options,
                    image.pixels,
                    background=image.background,
                    recolour=recolour,
                    max_pixels=budget,
                )
        return rendered

    def _recolour(self, options: RemovalOptions) -> Recolour | None:
        """The edge step's colour for see-through pixels, when the request has it."""
        if not self.decontaminates(options):
            return None
        work_edge = self.settings.max_edge
        step = self.edge_step

        def recolour(pixels: np.ndarray, mask: np.ndarray, out: np.ndarray | None) -> np.ndarray:
            return step.decontaminate(pixels, mask, work_edge=work_edge, out=out)

        return recolour

    def finish(
        self, image: DecodedImage, mask: np.ndarray, options: RemovalOptions, model: str
    ) -> tuple[RemovalResult, float]:
        """Stages 3 and 4: refine, composite, encode (``mask`` at the result's size).
        Returns the result and the encode's seconds."""
        rendered = self.compose(image, mask, options)
        started = time.perf_counter()
        with span("encode"):
            if rendered.color is not None:
                body = encode_zip(rendered.color, rendered.image, options.quality, self._encode)
            else:
                body = encode(
                    rendered.image, rendered.format, options.quality, self._encode, rendered.pixels
                )
        output = CachedResult(
            body=body,
            media_type=CONTENT_TYPES[rendered.format],
            format=rendered.format,
            width=rendered.image.width,
            height=rendered.image.height,
            box=rendered.box,
            model=model,
            source_size=image.source_size,
        )
        return RemovalResult(output), time.perf_counter() - started

    def rehearse(self, size: tuple[int, int] = (1728, 1152), matte_edge: int = 1024) -> None:
        """A photo's stages without the model, on a made-up photo (``size``, or less where
        BGSVC_MAX_PIXELS or BGSVC_MAX_OUTPUT_PIXELS is less) and matte (a soft disc,
        ``matte_edge`` square, as a model makes it): decode (where an input format it can
        write is allowed), the edge step, compose and encode, in the calling thread."""
        budget = min(self.settings.max_pixels, self.settings.max_output_pixels)
        scale = min(1.0, (budget / (size[0] * size[1])) ** 0.5)
        w, h = max(1, int(size[0] * scale)), max(1, int(size[1] * scale))
        ramp = np.linspace(0, 255, w, dtype=np.uint8)
        photo = Image.fromarray(np.dstack([np.tile(ramp, (h, 1))] * 3))
        options = RemovalOptions()
        fmt = next((f for f in ("JPEG", "PNG", "WEBP") if f in self._formats), None)
        if fmt is None:
            edge = self.settings.max_edge
            image = DecodedImage.of(
                photo, None, source_format="PNG", source_size=(w, h), work_edge=edge
            )
        else:
            buf = io.BytesIO()
            photo.save(buf, fmt)
            image = self.decode(buf.getvalue(), options)
        yy, xx = np.mgrid[0:matte_edge, 0:matte_edge]
        half = matte_edge / 2
        matte = np.clip(half - np.hypot(yy - half, xx - half), 0, 255).astype(np.uint8)
        self.finish(image, self.full_matte(image, matte, options), options, "rehearsal")

    def remove(self, data: bytes, options: RemovalOptions) -> RemovalResult:
        """The whole pipeline in the calling thread (the CLI's path)."""
        engine = self.engine_for(options)
        image = self.decode(data, options)
        mask = self.full_matte(image, engine.predict(image.work_rgb), options)
        result, _ = self.finish(image, mask, options, engine.name)
        return result
