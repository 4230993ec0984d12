"""Decode an upload into oriented sRGB pixels, enforcing the input guard before heavy work."""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from bgsvc.errors import InvalidImage, MissingImage, TooManyPixels, UnsupportedFormat
from bgsvc.imaging import avif
from bgsvc.imaging import formats as _formats  # noqa: F401  (registers HEIF and AVIF)
from bgsvc.imaging.resize import shrink

_SRGB = ImageCms.createProfile("sRGB")
# Most scans a JPEG may hold. Each scan of a progressive JPEG runs over every block of the
# picture (about 1.5 ms a scan at 25 MP here) and an empty one is 10 bytes, so without a
# bound a 25 MB upload could buy an hour of decoding; encoders write about 10 (libjpeg's
# progressive script) to a few dozen; libjpeg-turbo's own API has a scan limit for this.
MAX_JPEG_SCANS = 256
# The next marker in a JPEG's entropy-coded data, which escapes every 0xFF it holds as
# FF 00 (and whose restart markers, FF D0-D7, belong to the scan).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")

# What is decoded at a reduced size when less is needed (DCT scaling): JPEG, and an MPO (a
# camera's JPEG with a second picture).
DRAFTED_FORMATS = frozenset({"JPEG", "MPO"})

# Pillow raises these for corrupt or truncated streams, depending on the codec.
# RuntimeError: what pi-heif and Pillow's AVIF plugin raise for a damaged file (libheif's
# security limits, libavif's failed frame decode).
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    RuntimeError,
)


@dataclass(frozen=True)
class DecodeLimits:
    """The input guard: what is accepted, how large the result may be, and how large the
    working copy (what the model's input is made from) may be."""

    allowed_formats: frozenset[str]
    max_pixels: int
    # The long edge of the working copy; the result is not bounded by it.
    max_edge: int
    # The result's pixel budget (the service's, or a smaller one the request asked for);
    # None: the source's size.
    max_output_pixels: int | None = None


@dataclass(frozen=True)
class DecodedImage:
    """An upload ready for the model: RGB pixels plus the input's own alpha, if it had one.

    The pixels are kept as an array only: the working copy, the edge step and the cutout
    all read them, and a Pillow image beside them held the photo twice (another 100 MB at
    25 MP, to the end of the request). ``rgb`` makes one when a step needs it."""

    # uint8 HxWx3.
    pixels: np.ndarray
    alpha: Image.Image | None
    source_format: str
    source_size: tuple[int, int]
    # The photo the cutout is to be put on, when the request sent one.
    background: Image.Image | None = None
    # The long edge of the working copy (0: the image itself).
    work_edge: int = 0

    @classmethod
    def of(cls, rgb: Image.Image, alpha: Image.Image | None, **fields: Any) -> DecodedImage:
        """From a decoded RGB image (let go of by the caller once this returns)."""
        return cls(pixels=as_array(rgb), alpha=alpha, **fields)

    @property
    def size(self) -> tuple[int, int]:
        """The result's size (the source's, within the output pixel budget)."""
        h, w = self.pixels.shape[:2]
        return w, h

    @property
    def work_size(self) -> tuple[int, int]:
        """The working copy's size: the result's, with its long edge within ``work_edge``."""
        return work_size(self.size, self.work_edge)

    @cached_property
    def rgb(self) -> Image.Image:
        """The pixels as a Pillow image, made once, for the steps that work on one."""
        return Image.fromarray(self.pixels, "RGB")

    @cached_property
    def work_pixels(self) -> np.ndarray:
        """The working copy as uint8 HxWx3: what the model's input is made from, so a 12 MP
        photo gives the model what a 4 MP one would (area-averaged: antialiased, as the
        Pillow downscale it replaces was; 9.5 ms from 12 MP)."""
        return shrink(self.pixels, self.work_size)

    @property
    def work_rgb(self) -> Image.Image:
        """The working copy as an image (the whole pipeline in one thread: the CLI)."""
        if self.work_size == self.size:
            return self.rgb
        return Image.fromarray(self.work_pixels)


# Above _WHOLE_BYTES of RGB (16 MP), as_array exports _BAND_BYTES of rows at a time.
_BAND_BYTES = 1 << 20
_WHOLE_BYTES = 48 << 20


def as_array(rgb: Image.Image) -> np.ndarray:
    """``rgb``'s pixels as a uint8 HxWx3 array. Pillow's own export (tobytes) holds them
    twice, as a list of chunks and then their join: 150 MB at 25 MP. Images over 16 MP go
    a band of rows at a time instead (at 25 MP in a fresh process 44 against 94 ms, page
    faults included); smaller ones in one go, which is faster there (1.3 against 2.1 ms at
    2 MP; served at 12 MP, bands added 5 ms to the decode)."""
    w, h = rgb.size
    if w * h * 3 <= _WHOLE_BYTES:
        return np.asarray(rgb, dtype=np.uint8)
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, _BAND_BYTES // (w * 3))
    for top in range(0, h, rows):
        out[top : top + rows] = np.asarray(rgb.crop((0, top, w, min(h, top + rows))))
    return out


def work_size(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """``size`` with its long edge brought within ``edge`` (0: unbounded)."""
    w, h = size
    if edge <= 0 or max(w, h) <= edge:
        return size
    scale = edge / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def target_size(size: tuple[int, int], limits: DecodeLimits) -> tuple[int, int]:
    """The result's size for a source of ``size``: the source's, scaled down (aspect kept)
    to fit max_output_pixels."""
    w, h = size
    budget = limits.max_output_pixels
    if budget is None or w * h <= budget:
        return size
    scale = math.sqrt(budget / (w * h))
    # Rounded down: the budget is a ceiling a client may rely on (remove.bg's sizes).
    return max(1, math.floor(w * scale)), max(1, math.floor(h * scale))


# A PNG's chunks are read one by one in Python by Pillow, before the header's size can be
# checked (and again between an APNG's frames), and each iCCP is inflated up to 1 MB
# outside the cap on text chunks: 24 MB of iCCP chunks took 100 s of CPU, and 2 million
# empty chunks 10 s. Real files hold a few dozen chunks besides their image data (a
# 25 MB PNG in 8 KB IDAT chunks holds 3,200 of those), one iCCP at most.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_CHUNKS = 20_000
MAX_PNG_OTHER_CHUNKS = 1_024
_PNG_DATA_CHUNKS = (b"IDAT", b"fdAT")


def check_png_chunks(data: bytes) -> None:
    """For a PNG: walk its chunk headers (no chunk is read) and refuse one of more
    chunks, or more chunks besides image data, or more ICC profiles, than a real file
    holds. Anything else passes untouched."""
    if not data.startswith(_PNG_SIGNATURE):
        return
    pos, chunks, other, profiles = len(_PNG_SIGNATURE), 0, 0, 0
    while pos + 8 <= len(data):
        kind = data[pos + 4 : pos + 8]
        chunks += 1
        if kind not in _PNG_DATA_CHUNKS:
            other += 1
            profiles += kind == b"iCCP"
        if chunks > MAX_PNG_CHUNKS or other > MAX_PNG_OTHER_CHUNKS or profiles > 1:
            raise InvalidImage("The PNG holds more chunks than an image needs.")
        if kind == b"IEND":
            return
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")


def _scans(data: bytes, most: int) -> int:
    """The scans of a JPEG's picture, counted by walking its segments as a decoder reads
    them (by their lengths, so an EXIF thumbnail's or a table's bytes are not taken for
    markers), up to its end-of-image marker: what follows (an MPO's second picture, a
    motion photo's video) is not decoded. Stops past ``most``."""
    pos, scans, end = 2, 0, len(data)
    while pos + 4 <= end and scans <= most:
        if data[pos] != 0xFF or data[pos + 1] in (0x00, 0xFF):
            found = _NEXT_MARKER.search(data, pos)  # fill bytes or junk, as libjpeg skips
            if found is None:
                break
            pos = found.start()
            continue
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length: restart markers, TEM
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: its header, then its entropy-coded data
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            pos = end if found is None else found.start()
    return scans


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """``data`` opened (header only) and checked against ``limits``: format allowed, pixel
    count from the header within budget. Shared by the still and the animated paths."""
    if not data:
        raise MissingImage("The request carries no image.")
    check_png_chunks(data)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=sorted(limits.allowed_formats))
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"Image exceeds {limits.max_pixels} pixels.") from exc
    except UnidentifiedImageError as exc:
        accepted = ", ".join(sorted(limits.allowed_formats))
        raise UnsupportedFormat(
            f"Unsupported or unrecognised image format; accepted: {accepted}."
        ) from exc
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"The image header could not be read: {exc}.") from exc
    if img.format == "AVIF":
        # libavif decodes the frame the bitstream holds, whatever size the header says.
        avif.check(data)
    if img.format in DRAFTED_FORMATS and _scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
        raise InvalidImage(
            f"The JPEG holds more than {MAX_JPEG_SCANS} scans, the most that are decoded."
        )
    w, h = img.size
    if w < 1 or h < 1:
        raise InvalidImage("The image has no pixels.")
    if w * h > limits.max_pixels:
        raise TooManyPixels(
            f"Image is {w}x{h} ({w * h} pixels); the limit is {limits.max_pixels} pixels."
        )
    if img.format in ("HEIF", "AVIF"):
        # Every coded picture the file holds is decoded whole (a grid's or overlay's
        # tiles, the alpha image), and what is reported is only the primary's size.
        coded = avif.coded_pixels(data)
        most = CODED_PER_PIXEL * w * h + CODED_EXTRA_PIXELS
        if coded > most:
            raise TooManyPixels(
                f"The image's pictures add up to {coded} pixels, more than a {w}x{h} image "
                f"takes ({most})."
            )
    return img


# A HEIF or AVIF image's coded pictures may add up to this many times its own pixels,
# and this many more: the picture and an alpha image of its size, with room for what a
# phone adds (a thumbnail, a depth map, an HDR gain map at half size: an iPhone photo's
# add up to about 1.4 times its size).
CODED_PER_PIXEL = 3
CODED_EXTRA_PIXELS = 1_000_000


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale: scale to 8 bits (Pillow's convert would clip instead)."""
    arr = np.asarray(img)
    if img.mode == "F":
        scaled = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255)
    else:
        scaled = arr.astype(np.float64) / 257.0 if arr.max(initial=0) > 255 else arr
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")


def _colorants(profile: ImageCms.ImageCmsProfile) -> list[tuple[float, float, float] | None]:
    p = profile.profile
    return [c[0] if c else None for c in (p.red_colorant, p.green_colorant, p.blue_colorant)]


_SRGB_COLORANTS = _colorants(ImageCms.ImageCmsProfile(_SRGB))


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    """Whether an embedded profile is sRGB: it says so ("sRGB IEC61966-2.1", "sRGB
    built-in", ...) and its primaries are sRGB's, so a mislabelled profile is converted."""
    if not ImageCms.getProfileDescription(profile).strip().lower().startswith("srgb"):
        return False
    for own, srgb in zip(_colorants(profile), _SRGB_COLORANTS, strict=True):
        if (
            own is None
            or srgb is None
            or max(abs(a - b) for a, b in zip(own, srgb, strict=True)) > 0.003
        ):
            return False
    return True


def _to_srgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK"):
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if _is_srgb(src):
            # Most camera and web JPEGs embed an sRGB profile: converting sRGB to sRGB
            # through LCMS costs ~37 ms on 2 MP (6x the JPEG decode) for no change.
            return img
        converted = ImageCms.profileToProfile(img, src, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        # A broken profile should not cost the user the image: fall back to plain conversion.
        return img
    return converted if converted is not None else img


def split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """An RGB image and its alpha channel (None when the image has none)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif mode.startswith("I") or mode == "F":
        img = _to_8bit(img)
    elif mode == "1":
        img = img.convert("L")

    alpha: Image.Image | None = None
    if img.mode == "RGBA":
        alpha = img.getchannel("A")
        if alpha.getextrema() == (255, 255):
            alpha = None
        if alpha is None:
            return img.convert("RGB"), None
        # Transparent pixels may hold anything; the model should see what a viewer sees:
        # the colour over white. Pasted straight from the RGBA image through its alpha,
        # which is what Image.composite of an RGB copy does, without that copy and
        # composite's own (200 MB at 25 MP; the same pixels, tested).
        rgb = Image.new("RGB", img.size, (255, 255, 255))
        rgb.paste(img, None, alpha)
        return rgb, alpha
    img = _to_srgb(img)
    return (img if img.mode == "RGB" else img.convert("RGB")), None


def decode(data: bytes, limits: DecodeLimits) -> DecodedImage:
    """Decode ``data`` into a :class:`DecodedImage`, raising a domain error for bad input.

    The format and pixel count are checked from the header before any pixel is decoded;
    EXIF orientation is applied, ICC profiles converted to sRGB, palette, greyscale,
    16-bit and alpha inputs normalised, and the image brought within the output budget.
    """
    img = open_image(data, limits)
    source_format = img.format or "UNKNOWN"
    header_size = img.size
    want = target_size(header_size, limits)
    if source_format in DRAFTED_FORMATS and want != header_size:
        # DCT-domain downscaling: decodes a large JPEG at 1/2, 1/4 or 1/8 of the cost;
        # draft never goes below the requested size, so quality is kept.
        img.draft(img.mode, want)
    try:
        img.load()
        loaded_size = img.size
        # In place: without an orientation tag a copy would only duplicate the pixels.
        ImageOps.exif_transpose(img, in_place=True)
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"The image could not be decoded: {exc}.") from exc

    rotated = img.size != loaded_size
    source_size = (header_size[1], header_size[0]) if rotated else header_size
    rgb, alpha = split_alpha(img)
    del img  # an RGBA decode is done with once split: 100 MB at 25 MP
    final = target_size(source_size, limits)
    if rgb.size != final:
        rgb = rgb.resize(final, Image.Resampling.BILINEAR, reducing_gap=2.0)
        if alpha is not None:
            alpha = alpha.resize(final, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return DecodedImage.of(
        rgb,
        alpha,
        source_format=source_format,
        source_size=source_size,
        work_edge=limits.max_edge,
    )
