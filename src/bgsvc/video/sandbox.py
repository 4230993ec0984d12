"""The serving process's side of the media child: start it, talk to it under a deadline
per step, and kill it when it overruns, crashes or is no longer wanted.

A file built to crash or hang a decoder costs the child, never the serving process: the
child holds itself to an address-space and a CPU-time limit before it reads the upload,
and every message the parent waits for has a wall-clock deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bgsvc.config import Settings, media_child_environ
from bgsvc.errors import (
    BgsvcError,
    InvalidParameter,
    InvalidVideo,
    VideoTimedOut,
    VideoTooLarge,
)
from bgsvc.imaging.video import VideoInfo, VideoLimits, check_limits
from bgsvc.video import protocol

CHILD = (sys.executable, "-m", "bgsvc.video.child")
# A probe's answer is one message without a payload; a child that writes more (a
# decoder exploit) is cut off there rather than buffered in the serving process.
PROBE_ANSWER_BYTES = protocol.HEAD.size + protocol.MAX_META
# Bytes a pixel of the formats that code each frame whole, at most (measured on photo
# cutouts: PNG frames 2-3, ProRes 4444 with alpha 1.15 at 1080p and 1.5 at 720p), and
# the most a video's result in one of them may weigh: a tenth of a worker's memory budget.
WHOLE_FRAME_BYTES = {"zip": 3.0, "mov": 1.5}
WHOLE_RESULT_BYTES = 400 * 1024**2
# The errors the child reports, by code; any other code is an invalid video.
_ERRORS: dict[str, type[BgsvcError]] = {
    cls.code: cls for cls in (InvalidVideo, VideoTooLarge, VideoTimedOut, InvalidParameter)
}


@dataclass(frozen=True)
class ChildConfig:
    """What the child is told before it reads the upload."""

    # "probe", "run", "part" (a segment's frames), "join" (the parts as one) or "encode"
    # (segments' finished frames, one segment after another: bgsvc.video.pool).
    mode: str
    limits: dict[str, Any]
    memory_bytes: int
    cpu_s: float
    step_timeout_s: float
    max_upload_bytes: int
    max_output_pixels: int | None = None
    format: str = "webm"
    # The finished frames' layout: RGBA, RGB or L.
    pixels: str = "RGBA"
    # A segment's frames: from ``first`` up to ``end`` (None: to the last).
    first: int = 0
    end: int | None = None
    # The largest part a join takes.
    max_part_bytes: int = 0
    # Whether a part's child encodes its frames (else it only decodes them, and the
    # parent has them encoded by an encoding child: bgsvc.video.pool).
    encode: bool = True
    # Allocations below this come from the heap and are reused (0: glibc's defaults).
    malloc_mmap_threshold_bytes: int = 0
    command: Sequence[str] = CHILD
    environ: Mapping[str, str] = field(default_factory=media_child_environ)

    def meta(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "limits": self.limits,
            "memory_bytes": self.memory_bytes,
            "cpu_s": self.cpu_s,
            "max_upload_bytes": self.max_upload_bytes,
            "max_output_pixels": self.max_output_pixels,
            "format": self.format,
            "pixels": self.pixels,
            "first": self.first,
            "end": self.end,
            "max_part_bytes": self.max_part_bytes,
            "encode": self.encode,
            "malloc_mmap_threshold_bytes": self.malloc_mmap_threshold_bytes,
        }


def _error(message: protocol.Message) -> BgsvcError:
    cls = _ERRORS.get(str(message.meta.get("code")), InvalidVideo)
    return cls(str(message.meta.get("message") or "The video could not be processed."))


def _exit_error(returncode: int | None) -> BgsvcError:
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return VideoTimedOut("Decoding the video used up its CPU time.")
    what = f"signal {-returncode}" if returncode and returncode < 0 else f"status {returncode}"
    return InvalidVideo(f"The video decoder failed on this file ({what}).")


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group (its own session, so its pid): what a decoder
    exploit started goes with it. Called only while the child is not known to be reaped:
    a group's id is not handed on while its leader or a member lives."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _start_message(config: ChildConfig, data: bytes) -> bytes:
    return protocol.pack_head("C", config.meta(), 0) + protocol.pack_head("V", {}, len(data)) + data


def _bounded_run(config: ChildConfig, data: bytes) -> tuple[bytes, int | None]:
    """The child's output (at most PROBE_ANSWER_BYTES of it) and its exit status; the
    child killed once it says more than that or overruns the step deadline."""
    proc = subprocess.Popen(
        list(config.command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(config.environ),
        start_new_session=True,
    )
    stdin, stdout = proc.stdin, proc.stdout
    if stdin is None or stdout is None:
        raise RuntimeError("the child has no pipes")
    out = bytearray()

    def feed() -> None:
        # A child that ended early (an error, a crash) closes its end: its answer says why.
        with contextlib.suppress(OSError, ValueError):
            stdin.write(_start_message(config, data))
            stdin.close()

    def drain() -> None:
        with contextlib.suppress(OSError, ValueError):
            while len(out) < PROBE_ANSWER_BYTES:
                chunk = stdout.read(PROBE_ANSWER_BYTES - len(out))
                if not chunk:
                    return
                out.extend(chunk)

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain)]
    deadline = time.monotonic() + config.step_timeout_s
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if len(out) >= PROBE_ANSWER_BYTES:
            raise InvalidVideo("The video decoder answered more than a header's worth.")
        if any(thread.is_alive() for thread in threads):
            raise VideoTimedOut(
                f"Reading the video's headers took longer than {config.step_timeout_s:g} s."
            )
        try:
            returncode = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise VideoTimedOut(
                f"Reading the video's headers took longer than {config.step_timeout_s:g} s."
            ) from None
    finally:
        if proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        for thread in threads:
            thread.join(5)
        for pipe in (stdin, stdout):
            with contextlib.suppress(OSError):
                pipe.close()
    return bytes(out), returncode


def probe(config: ChildConfig, data: bytes) -> tuple[VideoInfo, tuple[int, int]]:
    """The video's headers, within its limits (raises the child's error otherwise), read
    by a child that exits once it has answered. Blocking: call it off the event loop."""
    out, returncode = _bounded_run(config, data)
    try:
        kind, meta_len, _payload_len = protocol.unpack_head(out[: protocol.HEAD.size])

        start = protocol.HEAD.size
        meta = json.loads(out[start : start + meta_len]) if meta_len else {}
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, RecursionError):
        # RecursionError: JSON nested deeper than the parser goes, which no child writes.
        raise _exit_error(returncode) from None
    message = protocol.Message(kind, meta)
    if kind == "E":
        raise _error(message)
    if kind != "I":
        raise _exit_error(returncode)
    return read_header(meta, VideoLimits(**config.limits))


def read_header(meta: dict[str, Any], limits: VideoLimits) -> tuple[VideoInfo, tuple[int, int]]:
    """A child's account of the video's headers, checked again here: the child is not
    trusted either (a decoder exploit runs there), and what it says sets the charge, the
    cut into segments and the memory each frame is given. Raises InvalidVideo for an
    answer no honest child gives, and the limits' errors as the child would."""
    try:
        info = VideoInfo.from_json(meta["info"])
        size = (int(meta["size"][0]), int(meta["size"][1]))
        counts = (info.width, info.height, info.frames, info.rotation, info.rate_num)
        if not all(type(value) is int for value in (*counts, info.rate_den)):
            raise TypeError("a count that is not an integer")
        if not isinstance(info.duration_s, int | float):
            raise TypeError("a duration that is not a number")
    except (KeyError, IndexError, TypeError, ValueError):
        raise InvalidVideo("The video decoder gave a broken header.") from None
    check_limits(info, limits)
    if not (size[0] > 0 and size[1] > 0 and size[0] * size[1] <= limits.max_frame_pixels):
        raise InvalidVideo("The video decoder gave an impossible frame size.")
    return info, size


class MediaChild:
    """One running child: messages each way, each under the step deadline."""

    def __init__(self, proc: asyncio.subprocess.Process, config: ChildConfig) -> None:
        self.proc = proc
        self.config = config
        self.timeout = config.step_timeout_s
        self._gone = False
        # Whether the child's last answer was its own error (``E``), not a crash or a
        # silence: what it reported, rather than what happened to it.
        self.answered_error = False

    @classmethod
    async def start(cls, config: ChildConfig, data: bytes) -> MediaChild:
        proc = await asyncio.create_subprocess_exec(
            *config.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=dict(config.environ),
            # Its own session: a signal meant for the server's process group is not its.
            start_new_session=True,
            # A frame (6-8 MB at 1080p) comes in reads of this size, not paused and resumed
            # every 128 KB as under the default 64 KB.
            limit=protocol.PIPE_BYTES,
        )
        child = cls(proc, config)
        await child._send_raw(_start_message(config, data))
        return child

    async def _send_raw(self, data: bytes, payload: memoryview | None = None) -> None:
        stdin = self.proc.stdin
        if stdin is None or self._gone:
            return
        try:
            async with asyncio.timeout(self.timeout):
                stdin.write(data)
                if payload is not None and payload.nbytes:
                    stdin.write(payload)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            # The child ended (an error, a crash): the next receive says why.
            self._gone = True
        except TimeoutError:
            self.kill()
            raise VideoTimedOut(
                f"The video decoder did not take a frame within {self.timeout:g} s."
            ) from None

    async def send(
        self, kind: str, meta: dict[str, Any], payload: bytes | memoryview = b""
    ) -> None:
        """One message; the payload may be an array's memory, sent without a copy (it
        must not change until this returns)."""
        view = memoryview(payload).cast("B")
        await self._send_raw(protocol.pack_head(kind, meta, view.nbytes), view)

    async def receive(self, max_payload: int) -> protocol.Message:
        """The child's next message; its error raised, a crash or overrun as one."""
        stdout = self.proc.stdout
        if stdout is None:
            raise RuntimeError("the child has no stdout")
        try:
            async with asyncio.timeout(self.timeout):
                head = await stdout.readexactly(protocol.HEAD.size)
                kind, meta_len, payload_len = protocol.unpack_head(head)
                if payload_len > max_payload:
                    raise ValueError(f"a payload of {payload_len} bytes")

                meta = json.loads(await stdout.readexactly(meta_len)) if meta_len else {}
                payload = await stdout.readexactly(payload_len) if payload_len else b""
        except TimeoutError:
            self.kill()
            raise VideoTimedOut(
                f"The video decoder gave no answer within {self.timeout:g} s."
            ) from None
        except (asyncio.IncompleteReadError, ValueError, UnicodeDecodeError, RecursionError) as exc:
            self.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.proc.wait()
            if isinstance(exc, asyncio.IncompleteReadError):
                raise _exit_error(self.proc.returncode) from None
            # Killed here, for what it sent: not a decode that ran out of time.
            raise InvalidVideo("The video decoder sent a message past its bounds.") from None
        message = protocol.Message(kind, meta, payload)
        if kind == "E":
            self.answered_error = True
            raise _error(message)
        return message

    @property
    def gone(self) -> bool:
        """Whether a send found the child's end of the pipe closed."""
        return self._gone

    def kill(self) -> None:
        if self.proc.returncode is None:
            _kill_group(self.proc.pid)

    async def close(self) -> None:
        """Kill the child if it still runs, and reap it."""
        self.kill()
        stdout = self.proc.stdout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                # asyncio's wait() also waits for the pipe to close, which a reader paused
                # on a full buffer (frames left unread) never sees: what the dead child
                # wrote is read and dropped, a pipe's worth at most.
                if stdout is not None:
                    while await stdout.read(1 << 16):
                        pass
                await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


def video_limits(settings: Settings) -> VideoLimits:
    """The video limits the settings give."""
    return VideoLimits(
        max_duration_s=settings.video_max_duration_s,
        max_frames=settings.video_max_frames,
        max_frame_pixels=settings.video_max_frame_pixels,
        max_total_pixels=settings.video_max_total_pixels,
    )


def child_config(
    settings: Settings,
    mode: str,
    max_output_pixels: int | None = None,
    fmt: str = "webm",
    pixels: str = "RGBA",
) -> ChildConfig:
    """The child's configuration from the service's settings."""
    limits = asdict(video_limits(settings))
    if fmt in WHOLE_FRAME_BYTES:
        # A result is held whole where it is stored (and twice over in the child that
        # joins a cut video's parts): formats that code each frame whole are bounded by
        # what that result may weigh, not only by the pixels the model may run.
        most = int(WHOLE_RESULT_BYTES / WHOLE_FRAME_BYTES[fmt])
        limits["max_total_pixels"] = min(settings.video_max_total_pixels, most)
    return ChildConfig(
        mode=mode,
        limits=limits,
        memory_bytes=settings.video_child_memory_bytes,
        # A probe reads headers only; a run may take as long as a job's attempt.
        cpu_s=settings.video_step_timeout_s if mode == "probe" else settings.job_timeout_s,
        step_timeout_s=settings.video_step_timeout_s,
        max_upload_bytes=settings.max_upload_bytes,
        max_output_pixels=max_output_pixels,
        format=fmt,
        pixels=pixels,
        malloc_mmap_threshold_bytes=settings.malloc_mmap_threshold_bytes,
    )
