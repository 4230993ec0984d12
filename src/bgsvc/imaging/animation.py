"""Animated GIF, WebP and PNG (APNG): split into full frames, and joined again."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from bgsvc.errors import InvalidImage, InvalidParameter, TooManyFrames, TooManyPixels
from bgsvc.imaging.decode import (
    DECODE_ERRORS,
    DecodedImage,
    DecodeLimits,
    open_image,
    split_alpha,
    target_size,
)
from bgsvc.imaging.encode import GIF_TRANSPARENT, EncodeSettings, gif_frame
from bgsvc.options import RemovalOptions

# The kind of file each animated source comes back as by default.
SOURCE_KINDS = {"GIF": "gif", "WEBP": "webp", "PNG": "png"}
# Where an animation's budget is refused, the way round it.
_JOBS_HINT = "send longer animations to POST /jobs"


@dataclass(frozen=True)
class Animation:
    """Every frame of an animated upload, each the full picture a viewer shows then."""

    frames: list[DecodedImage]
    durations: list[int]
    # Pillow's ``loop``: 0 forever, else the count the source gave; None: played once
    # (a GIF without the NETSCAPE block).
    loop: int | None
    source_format: str


def animation_format(options: RemovalOptions, source_kind: str) -> str:
    """The kind of file an animation comes back as: the one asked for, else its own."""
    if not options.format_given or options.format == "auto":
        return source_kind
    if options.format in ("png", "webp", "gif"):
        return options.format
    raise InvalidParameter(
        f"format={options.format} cannot hold an animation; use png (APNG), webp or gif, "
        "or leave format out for the upload's own kind."
    )


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """The position after a chain of GIF data sub-blocks starting at ``pos``."""
    end = len(data)
    while pos < end:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
    return end


@dataclass(frozen=True)
class GifWalk:
    """What a GIF's blocks say before any pixel is decoded: its frames (up to the walk's
    stop) and the picture they need, which Pillow grows to take a frame reaching past the
    logical screen (decoders clip such a frame; Pillow enlarges the picture at its seek)."""

    frames: int
    width: int
    height: int


def walk_gif(data: bytes, stop_at: int) -> GifWalk:
    """The image descriptors in a GIF, counted by walking its blocks without decoding any
    pixel; stops once ``stop_at`` are seen, so a GIF of 100,000 frames costs no more than
    one of ``stop_at`` frames. A truncated file counts what it holds."""
    end = len(data)
    if end < 13:
        return GifWalk(0, 0, 0)
    pos = 13
    width, height = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    flags = data[10]
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    frames = 0
    while pos < end and frames < stop_at:
        block = data[pos]
        if block == 0x2C:  # image descriptor
            frames += 1
            if pos + 10 > end:
                break
            x0, y0, w, h = (
                int.from_bytes(data[i : i + 2], "little") for i in range(pos + 1, pos + 9, 2)
            )
            width, height = max(width, x0 + w), max(height, y0 + h)
            local = data[pos + 9]
            pos += 10
            if local & 0x80:
                pos += 3 << ((local & 7) + 1)
            pos = _skip_sub_blocks(data, pos + 1)  # the LZW code size, then the data
        elif block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        else:  # the trailer (0x3B), or bytes that are no GIF block
            break
    return GifWalk(frames, width, height)


def _frame_count(img: Image.Image, data: bytes, stop_at: int) -> tuple[int, int, int]:
    """The frames and the picture's width and height they are decoded at."""
    if img.format == "GIF":
        # Pillow's n_frames walks every frame of the file, however many.
        walk = walk_gif(data, stop_at)
        return walk.frames, max(walk.width, img.width), max(walk.height, img.height)
    # WebP's and APNG's counts are in their headers (the demuxer's, acTL).
    return min(int(getattr(img, "n_frames", 1)), stop_at), img.width, img.height


@dataclass(frozen=True)
class Probe:
    """An animated upload opened, its frames counted and within budget, none decoded."""

    image: Image.Image
    count: int
    # The kind of file it is: gif, webp or png.
    kind: str
    # The picture the frames were budgeted at (a GIF's frame may grow it, walk_gif); None:
    # the image's own size.
    canvas: tuple[int, int] | None = None


def probe_animation(data: bytes, limits: DecodeLimits, max_frames: int) -> Probe | None:
    """``data`` opened and checked against the frame and pixel budgets when it is an
    animation, before any frame is decoded; None for a still (left to the still path)."""
    img = open_image(data, limits)
    if img.format not in SOURCE_KINDS:
        return None
    try:
        if not getattr(img, "is_animated", False):
            return None
        count, w, h = _frame_count(img, data, max_frames + 1)
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"The animation could not be read: {exc}.") from exc
    if count <= 1:
        return None
    if count > max_frames:
        raise TooManyFrames(
            f"The animation has more than {max_frames} frames, the most a request takes; "
            f"{_JOBS_HINT}."
        )
    if count * w * h > limits.max_pixels:
        raise TooManyFrames(
            f"The animation is {count} frames of {w}x{h} ({count * w * h} pixels in all); "
            f"the limit is {limits.max_pixels} pixels over all frames; {_JOBS_HINT}."
        )
    return Probe(img, count, SOURCE_KINDS[str(img.format)], (w, h))


def open_animation(data: bytes, limits: DecodeLimits, max_frames: int) -> Animation | None:
    """Every frame of ``data`` when it is an animation within budget; None for a still."""
    probe = probe_animation(data, limits, max_frames)
    return None if probe is None else decode_frames(probe, limits)


def decode_frames(probe: Probe, limits: DecodeLimits) -> Animation:
    """Every frame of a probed animation as the full picture a viewer shows then."""
    img, count = probe.image, probe.count
    w, h = img.size
    grown = probe.canvas or img.size
    final = target_size((w, h), limits)
    frames: list[DecodedImage] = []
    durations: list[int] = []
    loop: int | None = None
    try:
        for index in range(count):
            img.seek(index)
            if img.width > grown[0] or img.height > grown[1]:
                # Past what the budget was checked against (the walk's picture): not
                # decoded. The walk sees every frame Pillow does, so only a file that
                # reads differently the second time gets here.
                raise InvalidImage(f"Frame {index + 1} of the animation changes its size.")
            # Pillow composes each frame over what its predecessor left (GIF disposal and
            # transparency, APNG blending, WebP's own decoder); the RGBA copy is that
            # full picture, and stays put when the next seek reuses ``img``. A GIF frame
            # that grew the picture is clipped to it, as decoders show it.
            frame = img.convert("RGBA")
            if frame.size != (w, h):
                frame = frame.crop((0, 0, w, h))
            rgb, alpha = split_alpha(frame)
            if rgb.size != final:
                rgb = rgb.resize(final, Image.Resampling.BILINEAR, reducing_gap=2.0)
                if alpha is not None:
                    alpha = alpha.resize(final, Image.Resampling.BILINEAR, reducing_gap=2.0)
            frames.append(
                DecodedImage.of(
                    rgb,
                    alpha,
                    source_format=img.format or "UNKNOWN",
                    source_size=(w, h),
                    work_edge=limits.max_edge,
                )
            )
            durations.append(round(float(img.info.get("duration") or 0)))
            if loop is None and img.info.get("loop") is not None:
                loop = int(img.info["loop"])
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"A frame of the animation is too large: {exc}.") from exc
    except EOFError:
        # Fewer frames than counted (a GIF cut at a block boundary): what decoded is kept.
        if len(frames) < 2:
            raise InvalidImage("The animation could not be decoded: it ends early.") from None
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"The animation could not be decoded: {exc}.") from exc
    return Animation(frames, durations, loop, probe.kind)


# The longest frame each output format holds: GIF's delay is 16-bit hundredths of a
# second, WebP's 24-bit milliseconds; both loop counts are 16-bit. APNG's hold any an
# APNG source had.
_LONGEST_FRAME_MS = {"gif": 0xFFFF * 10, "webp": 0xFFFFFF}


def encode_frames(
    frames: Sequence[Image.Image],
    durations: Sequence[int],
    loop: int | None,
    fmt: str,
    quality: int | None,
    settings: EncodeSettings,
) -> bytes:
    """``frames`` (one is a still) as an animated ``fmt``: gif, webp or png (APNG), with
    their durations (ms) and ``loop`` (None: played once), each cut to what ``fmt`` can
    hold (an APNG's 32-bit loop count and delays of up to 65535 s were a 500 as GIF or
    WebP)."""
    buf = io.BytesIO()
    first, rest = frames[0], list(frames[1:])
    longest = _LONGEST_FRAME_MS.get(fmt)
    if longest is not None:
        durations = [min(max(0, d), longest) for d in durations]
        loop = None if loop is None else min(max(0, loop), 0xFFFF)
    if fmt == "gif":
        paletted = [gif_frame(f) for f in frames]
        extra: dict[str, object] = {} if loop is None else {"loop": loop}
        paletted[0].save(
            buf,
            "GIF",
            save_all=True,
            append_images=paletted[1:],
            duration=list(durations),
            # Restore to the background: each frame is a whole picture, and what was
            # opaque in the last one must not show through this one's transparency.
            disposal=2,
            transparency=GIF_TRANSPARENT,
            optimize=False,
            **extra,
        )
    elif fmt == "webp":
        first.save(
            buf,
            "WEBP",
            save_all=True,
            append_images=rest,
            duration=list(durations),
            loop=1 if loop is None else loop,
            quality=quality or settings.webp_quality,
            alpha_quality=settings.webp_alpha_quality,
            method=settings.webp_method,
        )
    elif fmt == "png":
        first.save(
            buf,
            "PNG",
            save_all=True,
            append_images=rest,
            duration=list(durations),
            loop=1 if loop is None else loop,
            # Each frame replaces the last whole, transparency included.
            disposal=PngImagePlugin.Disposal.OP_BACKGROUND,
            blend=PngImagePlugin.Blend.OP_SOURCE,
            compress_level=settings.png_compress_level,
        )
    else:
        raise ValueError(f"{fmt} holds no animation")
    return buf.getvalue()
