"""Video through PyAV (FFmpeg): the headers read, frames decoded upright at the output
size, and frames encoded into the result with the source's timestamps and audio.

Only the media child (bgsvc.video.child) imports this: these functions parse untrusted
containers and streams, so they run where a crash or a runaway costs nothing but that
process."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import zipfile
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import av.container
import av.error
import numpy as np

from bgsvc.errors import InvalidVideo
from bgsvc.imaging.video import VideoInfo, rational_terms

# One codec thread: the child runs beside the forward passes that admission control
# budgets, and a decoder's own pool would take cores it did not count.
CODEC_THREADS = 1
# Audio each output container takes as it is (no transcoding): other audio is dropped.
AUDIO_PASSTHROUGH = {
    "webm": frozenset({"opus", "vorbis"}),
    "mov": frozenset({"aac"}),
    "mp4": frozenset({"aac"}),
    "zip": frozenset[str](),
}
# FFmpeg's AVCOL_*_UNSPECIFIED.
_UNSPECIFIED = 2
_CONTAINERS = {"webm": "webm", "mov": "mov", "mp4": "mp4"}
_VP9 = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
# The pixel layouts each kind of frame (cutout, on a colour, matte) is encoded in.
_VIDEO_CODECS: dict[tuple[str, str], tuple[str, str, dict[str, str]]] = {
    # VP9's alpha is a second stream in the WebM blocks; the realtime deadline keeps the
    # encode a small share of a frame's cost. Without lag-in-frames, libvpx holds back up
    # to 25 frames and encodes them when the file closes, after the model's last frame
    # (a segment of 13 frames was encoded whole at its end): at 0 each frame is encoded
    # as it comes, beside the next forward pass, into the same bytes.
    ("webm", "RGBA"): ("libvpx-vp9", "yuva420p", _VP9),
    ("webm", "RGB"): ("libvpx-vp9", "yuv420p", _VP9),
    ("webm", "L"): ("libvpx-vp9", "yuv420p", _VP9),
    # ProRes 4444 carries alpha; 422 HQ is enough without it.
    ("mov", "RGBA"): ("prores_ks", "yuva444p10le", {"profile": "4444"}),
    ("mov", "RGB"): ("prores_ks", "yuv422p10le", {"profile": "hq"}),
    ("mov", "L"): ("prores_ks", "yuv422p10le", {"profile": "hq"}),
    ("mp4", "RGB"): ("libx264", "yuv420p", {"preset": "veryfast", "crf": "20"}),
    ("mp4", "L"): ("libx264", "yuv420p", {"preset": "veryfast", "crf": "20"}),
}
_NDARRAY_FORMATS = {"RGBA": "rgba", "RGB": "rgb24", "L": "gray"}


def _failed(exc: BaseException) -> InvalidVideo:
    return InvalidVideo(f"The video could not be read: {exc}.")


def open_input(data: bytes) -> av.container.InputContainer:
    """The container opened (headers and stream parameters read)."""
    try:
        return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        raise _failed(exc) from exc


def probe(container: av.container.InputContainer) -> VideoInfo:
    """The headers of the first video stream: size, frames, duration, rate."""
    if not container.streams.video:
        raise InvalidVideo("The file holds no video stream.")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate or Fraction(0)
    # The longest the headers claim: the stream's own, or the container's (which may
    # count another stream, or lie on its own).
    duration = 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    if container.duration is not None:
        duration = max(duration, container.duration / av.time_base)
    frames = int(stream.frames or 0)
    # Whether the count is the stream's own (MP4's sample table, or Matroska's per-stream
    # DURATION tag times the rate), so a decode that falls well short of it is a cut file.
    exact = frames > 0
    if frames <= 0 and rate:
        own = _tag_seconds(stream.metadata.get("DURATION"))
        exact = own is not None
        estimate_from = own if own is not None else duration
        if estimate_from > 0:
            frames = math.ceil(estimate_from * float(rate) - 1e-6)
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    return VideoInfo(
        width=int(ctx.width or 0),
        height=int(ctx.height or 0),
        frames=frames,
        duration_s=duration,
        rate_num=int(rate.numerator),
        rate_den=int(rate.denominator) or 1,
        # FFmpeg keeps the display matrix with the frames (see frame_rotation).
        rotation=0,
        codec=ctx.name,
        audio_codec=audio,
        frames_exact=exact,
    )


def _tag_seconds(tag: str | None) -> float | None:
    """Matroska's ``HH:MM:SS.nnnnnnnnn`` stream duration, in seconds."""
    try:
        hours, minutes, seconds = (tag or "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def frame_rotation(frame: av.VideoFrame) -> int:
    """Degrees counterclockwise the frame turns to be shown upright (its display matrix),
    a multiple of 90."""
    return (round((frame.rotation or 0) / 90) * 90) % 360


def frames(
    container: av.container.InputContainer, audio_sink: Any | None = None
) -> Iterator[av.VideoFrame]:
    """Every frame of the first video stream in presentation order; the first audio
    stream's packets go to ``audio_sink(packet)`` as they are demuxed."""
    stream = container.streams.video[0]
    stream.codec_context.thread_count = CODEC_THREADS
    streams: list[Any] = [stream]
    if audio_sink is not None and container.streams.audio:
        streams.append(container.streams.audio[0])
    try:
        for packet in container.demux(*streams):
            if packet.stream.type == "audio":
                if packet.dts is not None and audio_sink is not None:
                    audio_sink(packet)
                continue
            yield from packet.decode()
    except (av.error.FFmpegError, ValueError) as exc:
        raise _failed(exc) from exc


def seek_point(
    container: av.container.InputContainer, index: int, most: int
) -> tuple[int, int] | None:
    """Where a decode for the ``index``-th frame (presentation order) may start: the
    timestamp of the last key frame at or before that frame, and the frame's own, read
    from the packets' headers (nothing is decoded). None where they cannot say: a packet
    without a timestamp, two packets with the same one, no more than ``index`` frames, or
    more than ``most``."""
    stream = container.streams.video[0]
    stamps: list[int] = []
    keys: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.pts is None or len(stamps) >= most:
                return None
            stamps.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    except (av.error.FFmpegError, ValueError) as exc:
        raise _failed(exc) from exc
    stamps.sort()
    if index >= len(stamps) or any(a == b for a, b in itertools.pairwise(stamps)):
        return None
    target = stamps[index]
    before = [key for key in keys if key <= target]
    return (max(before), target) if before else None


def numbered_frames(data: bytes, index: int, most: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """The video's frames numbered in presentation order, for a decode that wants those
    from the ``index``-th on: from the key frame before it where the packets' timestamps
    allow (frames before it numbered -1, at most ``index`` of them), else from the start.
    A segment late in a long video then decodes a group of pictures before its first
    frame, not every frame before it. No audio."""
    point = None
    if index > 0:
        headers = open_input(data)
        try:
            point = seek_point(headers, index, most)
        finally:
            headers.close()
    container = open_input(data)
    try:
        if point is not None:
            key, target = point
            stream = container.streams.video[0]
            try:
                container.seek(key, stream=stream, backward=True, any_frame=False)
            except (av.error.FFmpegError, ValueError) as exc:
                raise _failed(exc) from exc
            number = index
            for frame in frames(container):
                if frame.pts is None or frame.pts < target:
                    yield -1, frame
                    continue
                if number == index and frame.pts != target:
                    break  # the seek landed past the frame: decode from the start
                yield number, frame
                number += 1
            else:
                return
            container.close()
            container = open_input(data)
        yield from enumerate(frames(container))
    finally:
        container.close()


def upright_rgb(frame: av.VideoFrame, size: tuple[int, int], rotation: int) -> np.ndarray:
    """``frame`` as RGB at ``size`` (width, height, as shown), turned upright."""
    w, h = size
    quarter = rotation // 90
    # Scaled before it is turned: swscale works on the stored orientation.
    sw, sh = (h, w) if quarter % 2 else (w, h)
    # The frame's own matrix and range (tagged BT.709 stays BT.709), one thread.
    rgb: np.ndarray = frame.to_ndarray(
        format="rgb24",
        width=sw,
        height=sh,
        src_color_range=frame.color_range or None,
        threads=CODEC_THREADS,
    )
    if quarter:
        rgb = np.rot90(rgb, k=quarter)
    # Contiguous: it is sent as it lies in memory (a padded row is copied once, here).
    return np.ascontiguousarray(rgb)


# Colour tags an encoder copies from the source; its matrix and range also set the
# conversion from RGB.
_COLOUR_TAGS = ("color_primaries", "color_trc", "colorspace", "color_range")


def stream_params(source: av.container.InputContainer) -> dict[str, Any]:
    """What an encoder takes from the source's first video stream, as JSON: its time
    base and frame rate (the frames' timestamps are in that time base) and its colour
    tags, so an encoder in another process codes the frames as this one would."""
    src = source.streams.video[0]
    rate = src.average_rate or src.guessed_rate
    ctx = src.codec_context
    return {
        "time_base": _terms(src.time_base),
        "rate": _terms(rate),
        "colour": {name: int(getattr(ctx, name, 0) or 0) for name in _COLOUR_TAGS},
    }


def _terms(value: Fraction | None) -> list[int] | None:
    return None if not value else [int(value.numerator), int(value.denominator)]


def _fraction(terms: Any, default: Fraction) -> Fraction:
    """A time base or rate from stream_params, checked: it may come through the decoding
    child, which a decoder exploit may run."""
    if terms is None:
        return default
    checked = rational_terms(terms)
    if checked is None:
        raise InvalidVideo("The video decoder gave a broken time base or frame rate.")
    return Fraction(*checked)


class Encoder:
    """Frames (RGBA, RGB or L arrays) into the result, in order, with their timestamps;
    the source's audio passed through when the container takes its codec and ``source``
    is given. ``params`` are the source's stream_params."""

    def __init__(
        self,
        fmt: str,
        mode: str,
        size: tuple[int, int],
        params: dict[str, Any],
        source: av.container.InputContainer | None = None,
    ) -> None:
        self.fmt = fmt
        self.mode = mode
        self.size = size
        self.buffer = io.BytesIO()
        self.count = 0
        self._last_pts = -1
        self._times: list[float] = []
        self.time_base = _fraction(params.get("time_base"), Fraction(1, 1000))
        self.rate = _fraction(params.get("rate"), Fraction(25))
        self.audio: Any | None = None
        self._matrix: tuple[int, int] | None = None
        if fmt == "zip":
            self._zip: zipfile.ZipFile | None = zipfile.ZipFile(self.buffer, "w")
            self._out: av.container.OutputContainer | None = None
            return
        self._zip = None
        codec, pix_fmt, options = _VIDEO_CODECS[(fmt, mode)]
        out = av.open(self.buffer, mode="w", format=_CONTAINERS[fmt])
        self._out = out
        stream = out.add_stream(codec, rate=self.rate, options=options)
        if not isinstance(stream, av.VideoStream):
            raise TypeError(f"{codec} is no video codec")
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        stream.time_base = self.time_base
        stream.codec_context.time_base = self.time_base
        stream.codec_context.thread_count = CODEC_THREADS
        self._copy_colour(params.get("colour"), stream)
        self.stream = stream
        if source is not None:
            self.audio = _audio_stream(out, source, fmt)

    def _copy_colour(self, colour: Any, dst: av.VideoStream) -> None:
        # The source's tags, and its matrix and range for the conversion from RGB, so a
        # player shows the colours the source's rendition had. Unspecified (2) or
        # unknown (0) stays the encoder's default; so does anything not a tag's value.
        if not isinstance(colour, dict):
            return
        tags: dict[str, int] = {}
        for name in _COLOUR_TAGS:
            value = colour.get(name)
            if type(value) is int and 0 < value < 256:
                tags[name] = value
        for name, value in tags.items():
            if value != _UNSPECIFIED:
                with contextlib.suppress(AttributeError, ValueError, TypeError):
                    setattr(dst.codec_context, name, value)
        space = tags.get("colorspace", 0)
        if space not in (0, _UNSPECIFIED) and self.fmt != "zip":
            self._matrix = (space, tags.get("color_range", 1))

    def open(self) -> None:
        """Open the codec now rather than at the first frame: InvalidVideo where it
        refuses the stream parameters (a time base or rate libvpx does not take)."""
        if self._out is None:
            return
        try:
            self.stream.codec_context.open()
        except (av.error.FFmpegError, ValueError) as exc:
            raise InvalidVideo(f"The video's timing cannot be encoded: {exc}.") from exc

    def mux_audio(self, packet: Any) -> None:
        """One audio packet of the source, as it is (dropped when not passed through)."""
        if self.audio is None or self._out is None:
            return
        packet.stream = self.audio
        self._out.mux(packet)

    def add(self, pixels: np.ndarray, pts: int | None) -> None:
        """The next frame; ``pts`` in the source's time base (None: one after the last)."""
        if pts is None or pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        self.count += 1
        self._times.append(round(float(pts * self.time_base), 6))
        if self._zip is not None:
            from PIL import Image

            png = io.BytesIO()
            Image.fromarray(pixels, self.mode).save(png, "PNG", compress_level=1)
            self._zip.writestr(f"frame_{self.count:05d}.png", png.getvalue())
            return
        if self._out is None:
            raise RuntimeError("the encoder is closed")
        # Wrapped, not copied (8 MB a 1080p RGBA frame): the conversion writes a frame of
        # its own, so the pixels are not held past this call.
        frame = av.VideoFrame.from_numpy_buffer(pixels, format=_NDARRAY_FORMATS[self.mode])
        if self._matrix is not None:
            frame = frame.reformat(
                format=self.stream.pix_fmt,
                dst_colorspace=self._matrix[0],
                dst_color_range=self._matrix[1],
                threads=CODEC_THREADS,
            )
        else:
            frame = frame.reformat(format=self.stream.pix_fmt, threads=CODEC_THREADS)
        frame.pts = pts
        frame.time_base = self.time_base
        for packet in self.stream.encode(frame):
            self._out.mux(packet)

    def close(self) -> bytes:
        """The whole result."""
        if self._zip is not None:
            # What a video keeps in its container: when each frame is shown, in seconds.
            timing = {"fps": float(self.rate), "times": self._times}
            self._zip.writestr("timestamps.json", json.dumps(timing))
            self._zip.close()
        elif self._out is not None:
            for packet in self.stream.encode(None):
                self._out.mux(packet)
            self._out.close()
        return self.buffer.getvalue()


def _audio_stream(
    out: av.container.OutputContainer, source: av.container.InputContainer, fmt: str
) -> Any | None:
    """The source's audio stream in ``out`` when the container takes its codec as it is."""
    if not source.streams.audio:
        return None
    audio = source.streams.audio[0]
    if audio.codec_context.name not in AUDIO_PASSTHROUGH[fmt]:
        return None
    return out.add_stream_from_template(audio)


def join(fmt: str, parts: list[bytes], source: av.container.InputContainer) -> tuple[bytes, int]:
    """The parts of a cut video (each encoded by an Encoder without audio, from the
    source's own timestamps) as one file, and its frame count: their packets as they are
    (each part starts on a key frame), then the source's audio where it passes."""
    if fmt == "zip":
        return _join_zips(parts)
    buffer = io.BytesIO()
    out = av.open(buffer, mode="w", format=_CONTAINERS[fmt])
    video: Any | None = None
    audio: Any | None = None
    frames = 0
    try:
        for part in parts:
            with av.open(io.BytesIO(part), mode="r") as container:
                stream = container.streams.video[0]
                if video is None:
                    video = out.add_stream_from_template(stream)
                    audio = _audio_stream(out, source, fmt)
                for packet in container.demux(stream):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.stream = video
                    out.mux(packet)
                    frames += 1
        if video is None:
            raise InvalidVideo("A cut video had no parts to join.")
        if audio is not None:
            for sound in source.demux(source.streams.audio[0]):
                if sound.dts is None:
                    continue
                sound.stream = audio
                out.mux(sound)
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise _failed(exc) from exc
    finally:
        out.close()
    return buffer.getvalue(), frames


def _join_zips(parts: list[bytes]) -> tuple[bytes, int]:
    buffer = io.BytesIO()
    times: list[float] = []
    fps = 0.0
    with zipfile.ZipFile(buffer, "w") as joined:
        for part in parts:
            with zipfile.ZipFile(io.BytesIO(part)) as archive:
                timing = json.loads(archive.read("timestamps.json"))
                fps = fps or float(timing["fps"])
                names = sorted(n for n in archive.namelist() if n.startswith("frame_"))
                for position, name in enumerate(names):
                    joined.writestr(f"frame_{len(times) + 1:05d}.png", archive.read(name))
                    times.append(float(timing["times"][position]))
        joined.writestr("timestamps.json", json.dumps({"fps": fps, "times": times}))
    return buffer.getvalue(), len(times)
