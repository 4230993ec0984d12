"""The media child: ``python -m bgsvc.video.child``, started by bgsvc.video.sandbox.

It takes its configuration, holds itself to its memory and CPU limits, and only then
reads the upload. It probes the headers and checks the limits before decoding any frame
(``probe`` mode stops there), then sends frames while the parent returns finished ones,
at most ``WINDOW`` ahead, and encodes those into the result. A segment of a cut video
(``part`` mode) does the same for the frames of its range, without audio, or only
decodes them when the parent has them encoded elsewhere; ``join`` puts the parts'
packets, as they are, into one file with the source's audio. ``encode`` mode reads no
upload: it encodes segments' finished frames, one segment after another, for as long as
the parent keeps it (bgsvc.video.pool). Every failure is an ``E`` message with a stable
code; a crash is the parent's to report.
"""

from __future__ import annotations

import itertools
import resource
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, BinaryIO

from bgsvc.allocator import tune_malloc
from bgsvc.errors import BgsvcError, InvalidVideo, VideoTooLarge
from bgsvc.video import protocol

# Frames sent and not yet returned finished. Two lets the parent prepare one frame while
# the model runs on the other; the parent returns frame n only once it holds frame n+1,
# so neither side ever blocks writing while the other does.
WINDOW = 2
# An encoding child's heap serves allocations up to glibc's largest mmap threshold (and,
# kept, every larger one too).
ENCODER_MMAP_THRESHOLD = 32 * 1024 * 1024


def _limit(kind: int, value: int) -> None:
    _soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value if hard == resource.RLIM_INFINITY else hard))


def _hold(config: dict[str, Any]) -> None:
    _limit(resource.RLIMIT_AS, int(config["memory_bytes"]))
    # CPU seconds: a decoder made to spin stops here even if the parent is gone.
    _limit(resource.RLIMIT_CPU, max(1, int(config["cpu_s"])))
    _limit(resource.RLIMIT_CORE, 0)


def _run(config: dict[str, Any], data: bytes, inbox: BinaryIO, outbox: BinaryIO) -> None:
    import av.logging

    from bgsvc.imaging import video_codec
    from bgsvc.imaging.video import VideoInfo, VideoLimits, check_limits, output_size

    # FFmpeg's own complaints about a broken stream are not the parent's business.
    av.logging.set_level(None)
    limits = VideoLimits(**config["limits"])
    container = video_codec.open_input(data)
    try:
        info: VideoInfo = video_codec.probe(container)
        # Everything the limits bound is read from the headers: no frame is decoded yet.
        check_limits(info, limits)
        if config["mode"] == "probe":
            size = output_size(info.display_size, config.get("max_output_pixels"))
            protocol.write(outbox, "I", {"info": info.to_json(), "size": list(size)})
            return
        if config["mode"] == "join":
            _join(config, container, info, limits, inbox, outbox)
            return
        encoder: video_codec.Encoder | None = None
        audio: list[Any] = []
        # A segment's part carries no audio: the join takes it from the source.
        part = config["mode"] == "part"

        def audio_sink(packet: Any) -> None:
            # Packets demuxed before the encoder exists (its size waits for the first
            # frame's rotation) are muxed once it does.
            if part:
                return
            if encoder is None:
                audio.append(packet)
            else:
                encoder.mux_audio(packet)

        numbered: Iterator[tuple[int, Any]]
        start = int(config.get("first") or 0)
        if part and start > 0:
            numbered = video_codec.numbered_frames(data, start, limits.allowed_frames(info.frames))
        else:
            numbered = enumerate(video_codec.frames(container, audio_sink))
        first = next(numbered, None)
        if first is None:
            raise InvalidVideo("No frame of the video could be decoded.")
        rotation = video_codec.frame_rotation(first[1])
        info = replace(info, rotation=rotation)
        size = output_size(info.display_size, config.get("max_output_pixels"))
        params = video_codec.stream_params(container)
        protocol.write(outbox, "I", {"info": info.to_json(), "size": list(size), "stream": params})
        if part and not config.get("encode", True):
            # The parent has the frames encoded by a child of its own (bgsvc.video.pool).
            encoder = None
        else:
            encoder = video_codec.Encoder(
                config["format"], config["pixels"], size, params, None if part else container
            )
            for packet in audio:
                encoder.mux_audio(packet)
        _stream(
            config, info, limits, size, itertools.chain([first], numbered), encoder, inbox, outbox
        )
    finally:
        container.close()


def _join(
    config: dict[str, Any],
    source: Any,
    info: Any,
    limits: Any,
    inbox: BinaryIO,
    outbox: BinaryIO,
) -> None:
    """The parts (``P`` messages, in order, until ``Q``) as one file, their packets as
    they are, with the source's audio; refused, as a whole run is, when they fall well
    short of the stream's own count (each part codes a frame a packet)."""
    from bgsvc.imaging import video_codec

    parts: list[bytes] = []
    while True:
        message = protocol.read(inbox, int(config["max_part_bytes"]))
        if message.kind == "Q":
            break
        if message.kind != "P":
            raise InvalidVideo(f"the parent sent {message.kind!r} for a part")
        parts.append(message.payload)
    body, frames = video_codec.join(config["format"], parts, source)
    if limits.too_few_frames(frames, info):
        raise InvalidVideo(
            f"The video ends after {frames} of the {info.frames} frames its header counts: "
            "it is cut short or damaged."
        )
    protocol.write(outbox, "D", {"frames": frames}, body)


def _stream(
    config: dict[str, Any],
    info: Any,
    limits: Any,
    size: tuple[int, int],
    numbered: Iterator[tuple[int, Any]],
    encoder: Any,
    inbox: BinaryIO,
    outbox: BinaryIO,
) -> None:
    """Frames out, at most WINDOW ahead of the finished ones coming back; then the
    result."""
    import numpy as np

    from bgsvc.imaging import video_codec

    allowed = limits.allowed_frames(info.frames)
    w, h = size
    channels = {"RGBA": 4, "RGB": 3, "L": 1}[config["pixels"]]
    shape = (h, w, channels) if channels > 1 else (h, w)
    sent: list[int | None] = []

    def encode_next() -> None:
        message = protocol.read(inbox, w * h * channels)
        if message.kind != "R":
            raise InvalidVideo(f"the parent sent {message.kind!r} for a frame")
        pixels = np.frombuffer(message.payload, np.uint8).reshape(shape)
        encoder.add(pixels, sent[encoder.count])

    # A segment's part: the frames ``first`` up to ``end`` (None: the last), numbered in
    # presentation order whatever the GOPs; those before ``first`` (numbered below it)
    # are decoded and dropped.
    first, end = int(config.get("first") or 0), config.get("end")
    skipped = 0
    for index, frame in numbered:
        if index >= allowed:
            raise VideoTooLarge(
                f"The video has more frames than its header says ({info.frames}); at most "
                f"{allowed} are taken."
            )
        if end is not None and index >= int(end):
            break
        if index < first:
            skipped += 1
            if skipped % protocol.SKIPPED_EVERY == 0:
                # Alive, and getting there: the parent's step deadline is per message, and
                # a segment may decode hundreds of frames before its first one.
                protocol.write(outbox, "S", {"skipped": skipped})
            continue
        rgb = video_codec.upright_rgb(frame, size, info.rotation)
        while encoder is not None and len(sent) - encoder.count >= WINDOW:
            encode_next()
        sent.append(frame.pts)
        protocol.write(outbox, "F", {"index": len(sent) - 1, "pts": frame.pts}, rgb.data)
    # Whether a cut video is whole is its join's to say (the parts' frames add up).
    if config["mode"] == "run" and limits.too_few_frames(len(sent), info):
        raise InvalidVideo(
            f"The video ends after {len(sent)} of the {info.frames} frames its header "
            "counts: it is cut short or damaged."
        )
    protocol.write(outbox, "N", {"frames": len(sent)})
    if encoder is None:
        return
    while encoder.count < len(sent):
        encode_next()
    protocol.write(outbox, "D", {"frames": len(sent)}, encoder.close())


def _encode(config: dict[str, Any], inbox: BinaryIO, outbox: BinaryIO) -> None:
    """Sessions one after another until the parent closes the pipe: ``B`` (a segment's
    format, layout, size and stream_params), answered ``A`` once the codec is open, its
    finished frames (``R``, each with its timestamp) until ``Q``, then ``D``. Every
    input is the parent's own: the frames it composed, and stream parameters it passes
    on from a decoding child, which the Encoder checks."""
    import numpy as np

    from bgsvc.imaging import video_codec

    while True:
        try:
            begin = protocol.read(inbox, 0)
        except EOFError:
            return
        if begin.kind != "B":
            raise InvalidVideo(f"the parent sent {begin.kind!r} to begin a segment")
        w, h = (int(side) for side in begin.meta["size"])
        mode = str(begin.meta["pixels"])
        channels = {"RGBA": 4, "RGB": 3, "L": 1}[mode]
        shape = (h, w, channels) if channels > 1 else (h, w)
        encoder = video_codec.Encoder(str(begin.meta["format"]), mode, (w, h), begin.meta["stream"])
        encoder.open()
        # Ready: a parameter the codec refuses was said before any frame ran the model.
        protocol.write(outbox, "A", {})
        while (message := protocol.read(inbox, w * h * channels)).kind == "R":
            pts = message.meta.get("pts")
            pixels = np.frombuffer(message.payload, np.uint8).reshape(shape)
            encoder.add(pixels, pts if type(pts) is int else None)
        if message.kind != "Q":
            raise InvalidVideo(f"the parent sent {message.kind!r} for a frame")
        protocol.write(outbox, "D", {"frames": encoder.count}, encoder.close())
        del encoder


def main() -> int:
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    protocol.widen(inbox.fileno())
    protocol.widen(outbox.fileno())
    config = protocol.read(inbox, 0).meta
    _hold(config)
    # A frame's buffers (6-8 MB at 1080p) come from the heap and are reused, rather than
    # mapped and page-faulted in again for every frame.
    # An encoding child also keeps what one segment's encoder freed for the next (its
    # memory limit bounds it): returned to the kernel, it is faulted in again, which on
    # this machine cost as much CPU as a fresh child's. That is what it is kept for, so
    # it is tuned whatever the serving process's own setting.
    threshold = int(config.get("malloc_mmap_threshold_bytes") or 0)
    if config["mode"] == "encode":
        tune_malloc(ENCODER_MMAP_THRESHOLD, int(config["memory_bytes"]))
    else:
        tune_malloc(threshold)
    try:
        upload = protocol.read(inbox, int(config["max_upload_bytes"]))
        if config["mode"] == "encode":
            _encode(config, inbox, outbox)
        else:
            _run(config, upload.payload, inbox, outbox)
    except BgsvcError as exc:
        protocol.write(outbox, "E", {"code": exc.code, "message": exc.message})
    except MemoryError:
        message = "Decoding the video needed more memory than a video may take."
        protocol.write(outbox, "E", {"code": InvalidVideo.code, "message": message})
    except EOFError:
        return 1  # the parent went away
    except Exception as exc:
        # Whatever else a hostile file provokes in the decoder is still the file's fault.
        message = f"The video could not be processed: {type(exc).__name__}: {exc}."
        protocol.write(outbox, "E", {"code": InvalidVideo.code, "message": message})
    return 0


if __name__ == "__main__":
    sys.exit(main())
