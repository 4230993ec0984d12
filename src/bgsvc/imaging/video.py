"""Video uploads: recognised by their container's signature, described by its headers, and
held to the limits before any frame is decoded. Pure: the decoding itself runs in a child
process (bgsvc.video), never in the serving one."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from bgsvc.errors import InvalidParameter, InvalidVideo, VideoTooLarge
from bgsvc.options import RemovalOptions

VideoFormat = Literal["webm", "mov", "mp4", "zip"]
VIDEO_FORMATS: tuple[VideoFormat, ...] = ("webm", "mov", "mp4", "zip")
VIDEO_CONTENT_TYPES: dict[str, str] = {
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mp4": "video/mp4",
    "zip": "application/zip",
}
# A frame rate beyond this is no camera's: a header claiming it is broken or hostile (a
# million frames a second makes a 10-frame clip last 10 microseconds, slipping past the
# duration limit while the muxers choke on its timestamps).
MAX_FRAME_RATE = 240.0
# Frames a decode may find beyond the header's count (estimates from duration and rate
# are off by a frame or two) before the file counts as lying about its length: bounds
# the work done beyond what was charged.
EXTRA_FRAMES_SHARE = 0.05
EXTRA_FRAMES_MIN = 2
# A decode may end this share (and EXTRA_FRAMES_MIN) short of the stream's own count
# before the file counts as cut: rounding of durations, an edit list.
SHORT_SHARE = 0.1

_EBML = b"\x1a\x45\xdf\xa3"  # Matroska and WebM
# ISO base media brands that are still images (HEIF, HEIC, AVIF): Pillow's, not ours.
_IMAGE_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevm", b"hevs", b"mif1", b"msf1", b"avif"}
    | {b"avis", b"avci", b"avcs"}
)
# A QuickTime file from before the ftyp box starts with one of these atoms.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"pnot"})


# The largest numerator or denominator of a time base or frame rate (FFmpeg's are ints).
MOST_TERM = 2**31 - 1


def rational_terms(terms: object) -> tuple[int, int] | None:
    """A time base or frame rate as a child writes it (``[numerator, denominator]``,
    both positive), else None."""
    if isinstance(terms, list) and len(terms) == 2:
        num, den = terms
        if type(num) is int and type(den) is int and 0 < num <= MOST_TERM and 0 < den <= MOST_TERM:
            return num, den
    return None


def stream_params_ok(params: object) -> bool:
    """Whether ``params`` is what an honest decoding child sends for an encoder
    (bgsvc.imaging.video_codec.stream_params): the child may be run by a decoder exploit,
    and what it sends goes on to an encoder that serves other videos."""
    if not isinstance(params, dict) or set(params) != {"time_base", "rate", "colour"}:
        return False
    if not isinstance(params["colour"], dict):
        return False
    rationals = (params.get(key) for key in ("time_base", "rate"))
    if any(value is not None and rational_terms(value) is None for value in rationals):
        return False
    return all(type(value) is int for value in params["colour"].values())


def is_video(data: bytes) -> bool:
    """Whether ``data`` is an MP4/MOV (ISO base media) or a Matroska/WebM container, from
    its first bytes: the client's content type is not trusted."""
    if data[:4] == _EBML:
        return True
    if len(data) < 12:
        return False
    box = data[4:8]
    if box == b"ftyp":
        # The major brand, then the compatible ones (after the minor version): an image
        # file (HEIF, AVIF) names an image brand among them, where a video never does.
        end = min(int.from_bytes(data[:4], "big"), 64, len(data))
        brands = [data[8:12]] + [data[i : i + 4] for i in range(16, end - 3, 4)]
        return not any(brand in _IMAGE_BRANDS for brand in brands)
    return box in _QUICKTIME_ATOMS


@dataclass(frozen=True)
class VideoLimits:
    """What a video may claim in its headers; each is checked before any frame decodes."""

    max_duration_s: float
    max_frames: int
    max_frame_pixels: int
    max_total_pixels: int

    def too_few_frames(self, decoded: int, info: VideoInfo) -> bool:
        """Whether a decode that ended after ``decoded`` frames fell well short of the
        stream's own count: the file is cut or damaged (its credits are given back)."""
        return info.frames_exact and decoded < info.frames * (1 - SHORT_SHARE) - EXTRA_FRAMES_MIN

    def allowed_frames(self, counted: int) -> int:
        """The most frames a decode may deliver for a header that counted ``counted``."""
        extra = max(EXTRA_FRAMES_MIN, int(counted * EXTRA_FRAMES_SHARE))
        return min(self.max_frames, counted + extra)


@dataclass(frozen=True)
class VideoInfo:
    """A video's headers: what is charged and limited before any frame is decoded."""

    width: int
    height: int
    # From the stream's header, else estimated from its duration and frame rate.
    frames: int
    duration_s: float
    rate_num: int
    rate_den: int
    # Degrees counterclockwise of the display matrix; the frames come out upright.
    rotation: int
    codec: str
    audio_codec: str | None = None
    # Whether ``frames`` is the stream's own count (else an estimate from the container's
    # duration, which may be another stream's).
    frames_exact: bool = False

    @property
    def fps(self) -> float:
        return self.rate_num / self.rate_den if self.rate_den else 0.0

    @property
    def display_size(self) -> tuple[int, int]:
        """The frames' size once the rotation is applied."""
        if self.rotation % 180:
            return self.height, self.width
        return self.width, self.height

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> VideoInfo:
        return cls(**values)


def check_limits(info: VideoInfo, limits: VideoLimits) -> None:
    """InvalidVideo for headers no real clip has, VideoTooLarge past a limit."""
    if info.width <= 0 or info.height <= 0:
        raise InvalidVideo("The video's header gives no frame size.")
    if info.fps <= 0 or info.fps > MAX_FRAME_RATE:
        raise InvalidVideo(
            f"The video's frame rate ({info.fps:g} fps) is not one a clip has; at most "
            f"{MAX_FRAME_RATE:g} fps."
        )
    if info.frames <= 0:
        raise InvalidVideo("The video holds no frames.")
    if info.duration_s > limits.max_duration_s:
        raise VideoTooLarge(
            f"The video lasts {info.duration_s:.1f} s; the limit is "
            f"{limits.max_duration_s:g} s (BGSVC_VIDEO_MAX_DURATION_S)."
        )
    if info.frames > limits.max_frames:
        raise VideoTooLarge(
            f"The video has {info.frames} frames; the limit is {limits.max_frames} "
            "(BGSVC_VIDEO_MAX_FRAMES)."
        )
    pixels = info.width * info.height
    if pixels > limits.max_frame_pixels:
        raise VideoTooLarge(
            f"The video's frames are {info.width}x{info.height} ({pixels} pixels); the limit "
            f"is {limits.max_frame_pixels} pixels a frame (BGSVC_VIDEO_MAX_FRAME_PIXELS)."
        )
    if pixels * info.frames > limits.max_total_pixels:
        raise VideoTooLarge(
            f"The video is {info.frames} frames of {info.width}x{info.height} "
            f"({pixels * info.frames} pixels in all); the limit is {limits.max_total_pixels} "
            "(BGSVC_VIDEO_MAX_TOTAL_PIXELS)."
        )


def video_format(options: RemovalOptions) -> VideoFormat:
    """The kind of file a video comes back as: webm unless another was asked for."""
    if not options.format_given or options.format == "auto":
        return "webm"
    if options.format in VIDEO_FORMATS:
        return options.format
    raise InvalidParameter(
        f"format={options.format} cannot hold a video; use webm (the default), mov, mp4 "
        "or zip (PNG frames)."
    )


def check_video_options(options: RemovalOptions) -> VideoFormat:
    """The output format, once the options are known to apply to a video."""
    if options.crop:
        # Each frame's subject has its own box: frames cropped apart make no video.
        raise InvalidParameter("crop does not apply to a video.")
    if options.placement is not None or options.roi is not None:
        raise InvalidParameter("scale, position and roi do not apply to a video.")
    if options.bg_image is not None:
        raise InvalidParameter("A background image does not apply to a video; use bg_color.")
    return video_format(options)


def output_size(size: tuple[int, int], max_pixels: int | None) -> tuple[int, int]:
    """A video's output size: the display size within ``max_pixels``, each side even
    (4:2:0 chroma, and H.264, take no odd side)."""
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
        w, h = int(w * scale), int(h * scale)
    return max(2, w - w % 2), max(2, h - h % 2)
