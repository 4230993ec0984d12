"""What a caller can ask for, independent of which API dialect they spoke."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import ImageColor

from bgsvc.errors import InvalidParameter

OutputFormat = Literal["png", "webp", "jpg", "gif", "auto", "zip", "webm", "mov", "mp4"]
Channels = Literal["rgba", "alpha"]
# "first": the first frame of an animation, as a still (the compatible dialects' answer);
# "all": every frame, the result an animation too.
Frames = Literal["first", "all"]
RGBA = tuple[int, int, int, int]

_FORMAT_ALIASES: dict[str, OutputFormat] = {
    "png": "png",
    "webp": "webp",
    "jpg": "jpg",
    "jpeg": "jpg",
    # A GIF's alpha is 1-bit: the matte is cut at 50 %.
    "gif": "gif",
    "auto": "auto",
    # remove.bg's: color.jpg and alpha.png in one zip, to be composed by the client.
    "zip": "zip",
    # Videos (POST /jobs): VP9 with alpha, ProRes 4444 with alpha, H.264 on a colour.
    "webm": "webm",
    "mov": "mov",
    "mp4": "mp4",
}
_RGB_LIST = re.compile(
    r"^\(?\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*(?:,\s*(\d{1,3})\s*)?\)?$"
)
_HEX_BARE = re.compile(r"^[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$")

# The longest option value read. A legitimate one ("10.5px 20.5% 10.5px 20.5%", a CSS
# colour name) is a few dozen characters; numbers of hundreds of digits are still taken
# (and clamped), but a JSON body sets no bound of its own: 25 MB of "1 " as roi was split
# and matched token by token on the event loop for 31 s.
MAX_OPTION_CHARS = 1024


def _bounded(value: str | None, name: str) -> str | None:
    """``value``, refused when longer than any legitimate one before it is parsed."""
    if value is not None and len(value) > MAX_OPTION_CHARS:
        raise InvalidParameter(f"{name} is longer than {MAX_OPTION_CHARS} characters.")
    return value


def _shown(value: str | None) -> str:
    """``value`` quoted for an error message, cut short: a message does not echo a
    client's megabytes back."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_MARGIN_TOKEN = re.compile(r"^(\d+(?:\.\d+)?)(px|%)?$")


@dataclass(frozen=True)
class Margin:
    """A crop margin per side, each in pixels or as a fraction of the subject's size."""

    top: float = 0.0
    right: float = 0.0
    bottom: float = 0.0
    left: float = 0.0
    relative: tuple[bool, bool, bool, bool] = (False, False, False, False)

    def resolve(self, subject_w: int, subject_h: int) -> tuple[int, int, int, int]:
        """Margins in pixels (top, right, bottom, left), capped at 50% of the subject or 500 px."""
        out = []
        for value, rel, extent in zip(
            (self.top, self.right, self.bottom, self.left),
            self.relative,
            (subject_h, subject_w, subject_h, subject_w),
            strict=True,
        ):
            px = value * extent / 100.0 if rel else value
            out.append(round(min(px, extent * 0.5, 500.0) if rel else min(px, 500.0)))
        return out[0], out[1], out[2], out[3]


@dataclass(frozen=True)
class Roi:
    """remove.bg's region of interest: ``x1 y1 x2 y2``, each in pixels of the upload (as it
    is shown, EXIF rotation applied) or in % of its width or height. Outside it the result
    is transparent."""

    values: tuple[float, float, float, float]
    relative: tuple[bool, bool, bool, bool]

    def resolve(
        self, size: tuple[int, int], source_size: tuple[int, int]
    ) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) in pixels of an image of ``size`` made from an upload of
        ``source_size`` (smaller when the max-edge guard or ``size`` scaled it)."""
        out = []
        for i, (value, rel) in enumerate(zip(self.values, self.relative, strict=True)):
            extent, source = (size[0], source_size[0]) if i % 2 == 0 else (size[1], source_size[1])
            px = value * extent / 100.0 if rel else value * extent / max(1, source)
            # Clamped before rounding: a value of 400 digits is an infinite float.
            out.append(round(min(max(px, 0.0), float(extent))))
        if out[2] <= out[0] or out[3] <= out[1]:
            # Mixed units compare only here, against the photo's size.
            raise InvalidParameter("roi: x2 and y2 must exceed x1 and y1.")
        return out[0], out[1], out[2], out[3]

    def apply(
        self, mask: np.ndarray, size: tuple[int, int], source_size: tuple[int, int]
    ) -> np.ndarray:
        """``mask`` (uint8, HxW) cleared outside the region."""
        x1, y1, x2, y2 = self.resolve(size, source_size)
        inside = np.zeros_like(mask)
        inside[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
        return inside


@dataclass(frozen=True)
class Placement:
    """remove.bg's ``scale`` (the subject's box as a fraction of the canvas along its
    tighter side; None: as it is) and ``position`` (where the box goes, as fractions of
    the free space, CSS background-position style; None: where it was, centre kept)."""

    scale: float | None = None
    x: float | None = None
    y: float | None = None


@dataclass(frozen=True)
class RemovalOptions:
    """Everything that shapes one result; part of the cache key for a later result cache."""

    format: OutputFormat = "png"
    bg_color: RGBA | None = None
    channels: Channels = "rgba"
    crop: bool = False
    crop_margin: Margin = field(default_factory=Margin)
    quality: int | None = None
    alpha_matting: bool = False
    alpha_matting_foreground_threshold: int = 240
    alpha_matting_background_threshold: int = 10
    alpha_matting_erode_size: int = 10
    post_process_mask: bool = False
    model: str | None = None
    # The result's pixel budget asked for (``size``); None: the service's own.
    max_output_pixels: int | None = None
    # Edge-aware enlargement of the matte, guided by the photo (else bilinear); None: the
    # service's default (BGSVC_REFINE).
    refine: bool | None = None
    # Foreground colour estimated where the matte is soft (else the photo's own colour);
    # None: the service's default (BGSVC_DECONTAMINATE).
    decontaminate: bool | None = None
    # A video's mattes smoothed from frame to frame; None: the service's default
    # (BGSVC_VIDEO_SMOOTHING). Stills and animations ignore it.
    smooth: bool | None = None
    roi: Roi | None = None
    placement: Placement | None = None
    # A background photo (remove.bg's bg_image_file/url): its bytes stay out of the repr,
    # which keys the result cache; its digest stands for them there.
    bg_image: bytes | None = field(default=None, repr=False)
    bg_image_digest: str | None = field(default=None, init=False)
    frames: Frames = "first"
    # Whether ``format`` was the caller's choice: an animation left to the default comes
    # back in its own kind of file (a GIF as a GIF), a still as ``format``.
    format_given: bool = True

    def __post_init__(self) -> None:
        background = self.bg_color is not None or self.bg_image is not None
        if self.format == "zip" and (background or self.channels == "alpha"):
            # The zip's colour and matte are the client's to compose: a background or a
            # matte-only answer would give it nothing it could compose into either.
            raise InvalidParameter(
                "format=zip takes neither a background colour or image nor channels=alpha."
            )
        if self.bg_image is not None:
            if self.bg_color is not None:
                raise InvalidParameter("Send a background colour or a background image, not both.")
            if self.channels == "alpha":
                raise InvalidParameter("channels=alpha returns the matte; it takes no background.")
            digest = hashlib.sha256(self.bg_image).hexdigest()
            object.__setattr__(self, "bg_image_digest", digest)


# remove.bg's named output sizes as pixel budgets (None: the service's own budget).
SIZE_PIXELS: dict[str, int | None] = {
    "preview": 250_000,
    "small": 250_000,
    "regular": 250_000,
    "medium": 1_500_000,
    "hd": 4_000_000,
    "4k": None,
    "full": None,
    "auto": None,
    "50mp": 50_000_000,
}


def parse_size(value: str | None) -> int | None:
    """A result size: one of remove.bg's names (``preview`` ... ``full``, ``50MP``) or a
    number of pixels; None: the service's budget (BGSVC_MAX_OUTPUT_PIXELS)."""
    text = (_bounded(value, "size") or "").strip().lower()
    if not text:
        return None
    if text in SIZE_PIXELS:
        return SIZE_PIXELS[text]
    if text.isdigit() and len(text) <= 12 and int(text) > 0:
        return int(text)
    names = ", ".join(SIZE_PIXELS)
    raise InvalidParameter(f"Unknown size {_shown(value)}; use {names} or a number of pixels.")


def parse_format(value: str | None) -> OutputFormat:
    """``png``, ``webp``, ``jpg``/``jpeg``, ``gif``, ``auto`` or ``zip``; for a video
    ``webm``, ``mov`` or ``mp4``."""
    if value is None or value == "":
        return "png"
    try:
        return _FORMAT_ALIASES[(_bounded(value, "format") or "").strip().lower()]
    except KeyError:
        raise InvalidParameter(
            f"Unknown format {_shown(value)}; use png, webp, jpg, gif, auto or zip "
            "(for a video: webm, mov, mp4 or zip)."
        ) from None


def parse_color(value: str | None) -> RGBA | None:
    """A colour as ``#rrggbb``, ``#rrggbbaa``, bare hex, ``r,g,b[,a]`` or a CSS name."""
    value = _bounded(value, "bg_color")
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _HEX_BARE.match(text):
        text = "#" + text
    match = _RGB_LIST.match(text)
    try:
        if match:
            parts = [int(p) for p in match.groups() if p is not None]
            if any(p > 255 for p in parts):
                raise ValueError(text)
            rgb: tuple[int, ...] = tuple(parts)
        else:
            rgb = ImageColor.getrgb(text)
    except ValueError:
        raise InvalidParameter(
            f"Unknown colour {_shown(value)}; use #rrggbb, #rrggbbaa, r,g,b[,a] "
            "or a CSS colour name."
        ) from None
    if len(rgb) == 3:
        return rgb[0], rgb[1], rgb[2], 255
    return rgb[0], rgb[1], rgb[2], rgb[3]


def parse_margin(value: str | None) -> Margin:
    """CSS-like margin: one, two or four values, each ``N``, ``Npx`` or ``N%``."""
    value = _bounded(value, "crop_margin")
    if value is None or not value.strip():
        return Margin()
    tokens = value.replace(",", " ").split(maxsplit=4)
    if len(tokens) > 4:
        raise InvalidParameter("crop_margin takes 1, 2 or 4 values.")
    parsed: list[tuple[float, bool]] = []
    for token in tokens:
        match = _MARGIN_TOKEN.match(token.strip().lower())
        if not match:
            raise InvalidParameter(
                f"Bad crop_margin {_shown(value)}; use e.g. 30px, 10% or '10px 5%' "
                "(1, 2 or 4 values)."
            )
        parsed.append((float(match.group(1)), match.group(2) == "%"))
    if len(parsed) == 1:
        parsed *= 4
    elif len(parsed) == 2:
        parsed = [parsed[0], parsed[1], parsed[0], parsed[1]]
    elif len(parsed) != 4:
        raise InvalidParameter("crop_margin takes 1, 2 or 4 values.")
    return Margin(
        top=parsed[0][0],
        right=parsed[1][0],
        bottom=parsed[2][0],
        left=parsed[3][0],
        relative=(parsed[0][1], parsed[1][1], parsed[2][1], parsed[3][1]),
    )


def parse_roi(value: str | None) -> Roi | None:
    """remove.bg's ``roi``: four values ``x1 y1 x2 y2``, each ``N``/``Npx`` or ``N%``."""
    value = _bounded(value, "roi")
    if value is None or not value.strip():
        return None
    tokens = value.replace(",", " ").split(maxsplit=4)
    matches = [_MARGIN_TOKEN.match(t.strip().lower()) for t in tokens]
    if len(tokens) != 4 or not all(matches):
        raise InvalidParameter(
            f"Bad roi {_shown(value)}; use four values x1 y1 x2 y2 in px or %, "
            "e.g. '0% 0% 100% 100%'."
        )
    values = tuple(float(m.group(1)) for m in matches if m)
    relative = tuple(m.group(2) == "%" for m in matches if m)
    for lo, hi in ((0, 2), (1, 3)):
        if relative[lo] == relative[hi] and values[lo] >= values[hi]:
            raise InvalidParameter(f"Bad roi {_shown(value)}: x2 and y2 must exceed x1 and y1.")
    return Roi(
        (values[0], values[1], values[2], values[3]),
        (relative[0], relative[1], relative[2], relative[3]),
    )


_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def _percent(token: str, name: str, lo: float, hi: float) -> float:
    match = _PERCENT.match(token.strip())
    value = float(match.group(1)) if match else -1.0
    if not lo <= value <= hi:
        raise InvalidParameter(
            f"Bad {name} {_shown(token)}; use a percentage from {lo:g}% to {hi:g}%."
        )
    return value / 100.0


def parse_placement(scale: str | None, position: str | None) -> Placement | None:
    """remove.bg's ``scale`` (``original`` or 10%-100%) and ``position`` (``original``,
    ``center``, or one or two of 0%-100%); a scale without a position centres the subject."""
    scale_text = (_bounded(scale, "scale") or "").strip().lower()
    position_text = (_bounded(position, "position") or "").strip().lower()
    factor = None
    if scale_text not in ("", "original"):
        factor = _percent(scale_text, "scale", 10, 100)
    if position_text in ("", "original"):
        if factor is None:
            return None
        x = y = None if position_text == "original" else 0.5
    elif position_text == "center":
        x = y = 0.5
    else:
        tokens = position_text.replace(",", " ").split(maxsplit=2)
        if len(tokens) not in (1, 2):
            raise InvalidParameter(
                f"Bad position {_shown(position)}; use original, center or x% [y%]."
            )
        x = _percent(tokens[0], "position", 0, 100)
        y = _percent(tokens[-1], "position", 0, 100)
    return Placement(factor, x, y)
