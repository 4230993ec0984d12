"""The media child: ``python -m bgsvc.video.child``, started by bgsvc.video.sandbox.

It takes its configuration, holds itself to its memory and CPU limits, and only then
reads the upload. It probes the headers and checks the limits before decoding any frame
(``probe`` mode stops there), then sends frames while the parent returns finished ones,
at most ``WINDOW`` ahead, and encodes those into the result. A segment of a video
(``frames`` mode) sends only the frames of its range and encodes nothing: the parent
keeps them, and a later ``run`` over the whole video encodes them all. Every failure is an ``E``
message with a stable code; a crash is the parent's to report.
"""

from __future__ import annotations

import itertools
import resource
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, BinaryIO

from bgsvc.errors import BgsvcError, InvalidVideo, VideoTooLarge
from bgsvc.video import protocol

# Frames sent and not yet returned finished. Two lets the parent prepare one frame while
# the model runs on the other; the parent returns frame n only once it holds frame n+1,
# so neither side ever blocks writing while the other does.
WINDOW = 2


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
        encoder: video_codec.Encoder | None = None
        audio: list[Any] = []

        segment = config["mode"] == "frames"

        def audio_sink(packet: Any) -> None:
            # Packets demuxed before the encoder exists (its size waits for the first
            # frame's rotation) are muxed once it does.
            if segment:
                return
            if encoder is None:
                audio.append(packet)
            else:
                encoder.mux_audio(packet)

        decoded = video_codec.frames(container, audio_sink)
        first = next(decoded, None)
        if first is None:
            raise InvalidVideo("No frame of the video could be decoded.")
        rotation = video_codec.frame_rotation(first)
        info = replace(info, rotation=rotation)
        size = output_size(info.display_size, config.get("max_output_pixels"))
        protocol.write(outbox, "I", {"info": info.to_json(), "size": list(size)})
        if segment:
            _segment(config, info, limits, size, itertools.chain([first], decoded), outbox)
            return
        encoder = video_codec.Encoder(config["format"], config["pixels"], size, container)
        for packet in audio:
            encoder.mux_audio(packet)
        _stream(
            config, info, limits, size, itertools.chain([first], decoded), encoder, inbox, outbox
        )
    finally:
        container.close()


def _stream(
    config: dict[str, Any],
    info: Any,
    limits: Any,
    size: tuple[int, int],
    decoded: Iterator[Any],
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

    for frame in decoded:
        if len(sent) >= allowed:
            raise VideoTooLarge(
                f"The video has more frames than its header says ({info.frames}); at most "
                f"{allowed} are taken."
            )
        rgb = video_codec.upright_rgb(frame, size, info.rotation)
        while len(sent) - encoder.count >= WINDOW:
            encode_next()
        sent.append(frame.pts)
        protocol.write(outbox, "F", {"index": len(sent) - 1}, rgb.tobytes())
    if limits.too_few_frames(len(sent), info):
        raise InvalidVideo(
            f"The video ends after {len(sent)} of the {info.frames} frames its header "
            "counts: it is cut short or damaged."
        )
    protocol.write(outbox, "N", {"frames": len(sent)})
    while encoder.count < len(sent):
        encode_next()
    protocol.write(outbox, "D", {"frames": len(sent)}, encoder.close())


def _segment(
    config: dict[str, Any],
    info: Any,
    limits: Any,
    size: tuple[int, int],
    decoded: Iterator[Any],
    outbox: BinaryIO,
) -> None:
    """The frames ``first`` up to ``end`` (None: the last), in order. The video is decoded
    from its start: frames are counted in presentation order whatever its GOPs, and
    decoding costs a fraction of a percent of what the model does with a frame."""
    from bgsvc.imaging import video_codec

    first, end = int(config["first"]), config["end"]
    allowed = limits.allowed_frames(info.frames)
    sent = 0
    for index, frame in enumerate(decoded):
        if index >= allowed:
            raise VideoTooLarge(
                f"The video has more frames than its header says ({info.frames}); at most "
                f"{allowed} are taken."
            )
        if end is not None and index >= int(end):
            break
        if index < first:
            continue
        rgb = video_codec.upright_rgb(frame, size, info.rotation)
        protocol.write(outbox, "F", {"index": index}, rgb.tobytes())
        sent += 1
    # Whether the video is whole is the stitch's to say: it decodes every frame.
    protocol.write(outbox, "N", {"frames": sent})


def main() -> int:
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    config = protocol.read(inbox, 0).meta
    _hold(config)
    try:
        upload = protocol.read(inbox, int(config["max_upload_bytes"]))
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
