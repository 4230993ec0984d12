"""Tiny video clips made with PyAV, for the tests: a yellow box moving over blue."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

# The containers a clip can come in, and the codec each is written with.
CODECS = {"mp4": "libx264", "mov": "libx264", "webm": "libvpx-vp9", "matroska": "libvpx-vp9"}
AUDIO = {"mp4": "aac", "mov": "aac", "webm": "libopus", "matroska": "libopus"}


def clip(
    container: str = "mp4",
    *,
    size: tuple[int, int] = (64, 48),
    frames: int = 10,
    rate: int = 25,
    time_base: Fraction | None = None,
    audio: bool = False,
    rotation: int = 0,
    bt709: bool = False,
    keyint: int | None = None,
) -> bytes:
    """A clip of ``frames`` frames of ``size`` at ``rate`` fps (timestamps counted in
    ``time_base``, 1/rate unless given), with a silent audio track when ``audio``, shown
    turned ``rotation`` degrees counterclockwise (the display matrix), with a key frame
    at least every ``keyint`` frames (else the encoder's default: the first only, for
    a clip this short). H.264 clips have B-frames (presentation order is not decode
    order)."""
    w, h = size
    base = time_base or Fraction(1, rate)
    step = int(Fraction(1, rate) / base)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        video = out.add_stream(CODECS[container], rate=Fraction(rate))
        video.width, video.height = w, h
        video.pix_fmt = "yuv420p"
        video.time_base = base
        video.codec_context.time_base = base
        if keyint is not None:
            video.codec_context.gop_size = keyint
        if rotation:
            video.set_display_rotation(rotation)
        if bt709:
            ctx = video.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = ctx.color_range = 1
        if CODECS[container] == "libvpx-vp9":
            video.options = {"deadline": "realtime", "cpu-used": "8"}
        sound = out.add_stream(AUDIO[container], rate=48000) if audio else None
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[...] = (40, 90, 200)
            img[h // 4 : 3 * h // 4, w // 4 + i : w // 2 + i] = (250, 220, 30)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if bt709:
                frame = frame.reformat(format="yuv420p", dst_colorspace=1, dst_color_range=1)
            frame.pts = i * step
            frame.time_base = base
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            samples = sound.codec_context.frame_size or 960
            for k in range(int(frames / rate * 48000 / samples) + 1):
                silence = av.AudioFrame.from_ndarray(
                    np.zeros((1, samples), np.float32), format="fltp", layout="mono"
                )
                silence.sample_rate = 48000
                silence.pts = k * samples
                for packet in sound.encode(silence):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return buf.getvalue()


def decode(data: bytes, *, alpha: bool = False) -> tuple[list[av.VideoFrame], av.VideoStream]:
    """Every frame of ``data``'s first video stream; ``alpha`` decodes VP9 with libvpx,
    the decoder that reads its alpha (FFmpeg's own vp9 decoder drops it)."""
    container = av.open(io.BytesIO(data))
    stream = container.streams.video[0]
    frames: list[av.VideoFrame] = []
    if alpha and stream.codec_context.name == "vp9":
        codec = av.CodecContext.create("libvpx-vp9", "r")
        for packet in container.demux(stream):
            frames.extend(codec.decode(packet))
    else:
        frames = list(container.decode(stream))
    container.close()
    return frames, stream


def h264(pictures: list[np.ndarray], *, crf: int = 18, pix_fmt: str = "yuv420p") -> bytes:
    """``pictures`` (uint8 HxWx3 RGB, one size) as an H.264 MP4 at 25 fps."""
    h, w = pictures[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height = w, h
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": str(crf)}
        for i, picture in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def zipped_alphas(body: bytes) -> list[np.ndarray]:
    """The alpha of every PNG frame in a video job's zip result, in frame order."""
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        return [np.asarray(Image.open(io.BytesIO(archive.read(n))))[..., 3] for n in names]
