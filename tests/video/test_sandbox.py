"""The media child's leash: a child that hangs or crashes costs a clear 4xx and nothing
else; the serving process never waits on it past the deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from bgsvc.errors import InvalidVideo, VideoTimedOut, VideoTooLarge
from bgsvc.video.sandbox import ChildConfig, MediaChild, probe
from tests.imaging.test_video import INFO
from tests.videos import clip

LIMITS = {
    "max_duration_s": 60.0,
    "max_frames": 100,
    "max_frame_pixels": 10**6,
    "max_total_pixels": 10**8,
}


def config(command: tuple[str, ...] | None = None, timeout: float = 0.5) -> ChildConfig:
    extra = {} if command is None else {"command": command}
    return ChildConfig(
        mode="probe",
        limits=LIMITS,
        memory_bytes=2 * 1024**3,
        cpu_s=5,
        step_timeout_s=timeout,
        max_upload_bytes=10**7,
        **extra,  # type: ignore[arg-type]
    )


HANG = (sys.executable, "-c", "import time; time.sleep(60)")
SPIN = (sys.executable, "-c", "while True: pass")
CRASH = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")


def first_answer_fails(
    command: tuple[str, ...], error: type[Exception], match: str = ""
) -> MediaChild:
    """A child running ``command``, whose first answer raised ``error``, closed."""

    async def run() -> MediaChild:
        child = await MediaChild.start(config(command), clip("mp4"))
        try:
            with pytest.raises(error, match=match or None):
                await child.receive(0)
        finally:
            await child.close()
        return child

    return asyncio.run(run())


@pytest.mark.parametrize("command", [HANG, SPIN], ids=["sleeps", "spins"])
def test_a_child_that_never_answers_is_killed_at_the_deadline(command: tuple[str, ...]) -> None:
    started = time.monotonic()
    child = first_answer_fails(command, VideoTimedOut)
    assert time.monotonic() - started < 10
    assert child.proc.returncode is not None  # killed and reaped, not left running


def test_a_child_that_crashes_is_an_invalid_video() -> None:
    first_answer_fails(CRASH, InvalidVideo, match="signal")


@pytest.mark.parametrize("command", [CRASH, (sys.executable, "-c", "pass")], ids=["crash", "exit"])
def test_a_probe_child_that_dies_before_answering_is_an_invalid_video(
    command: tuple[str, ...],
) -> None:
    # Not a server error: a file that crashes the decoder is the file's fault.
    with pytest.raises(InvalidVideo, match=r"signal|status"):
        probe(config(command), clip("mp4"))


def answering(meta: dict[str, object]) -> tuple[str, ...]:
    """A child (a decoder exploit's) that answers a probe with ``meta``."""
    script = (
        "import json, sys\n"
        "from bgsvc.video import protocol\n"
        "protocol.read(sys.stdin.buffer, 0); protocol.read(sys.stdin.buffer, 1 << 30)\n"
        f"protocol.write(sys.stdout.buffer, 'I', json.loads({json.dumps(json.dumps(meta))}))\n"
    )
    return (sys.executable, "-c", script)


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({"info": INFO}, InvalidVideo),
        ({"info": {**INFO, "frames": "10"}, "size": [64, 48]}, InvalidVideo),
        ({"info": {**INFO, "rate_den": 0}, "size": [64, 48]}, InvalidVideo),
        ({"info": {**INFO, "surprise": 1}, "size": [64, 48]}, InvalidVideo),
        ({"info": INFO, "size": [64000, 48000]}, InvalidVideo),
        # A product within the frame's pixels, of two impossible sides.
        ({"info": INFO, "size": [-16, -16]}, InvalidVideo),
        ({"info": {**INFO, "frames": 10**9}, "size": [64, 48]}, VideoTooLarge),
        ({"info": {**INFO, "width": 4000, "height": 3000}, "size": [64, 48]}, VideoTooLarge),
    ],
    ids=[
        "no-size",
        "text-count",
        "no-rate",
        "unknown-field",
        "huge-size",
        "negative-sides",
        "frames",
        "pixels",
    ],
)
def test_a_probe_answer_past_the_limits_or_broken_is_the_files_4xx(
    meta: dict[str, object], error: type[Exception]
) -> None:
    # What the child says sets the charge and the cut: a child taken over by the file
    # must not buy a million segments, nor a 500, with a made-up header.
    with pytest.raises(error):
        probe(config(answering(meta), timeout=10), clip("mp4"))
    assert probe(config(answering({"info": INFO, "size": [64, 48]}), timeout=10), clip("mp4"))


def test_a_child_answer_nested_past_the_parser_is_an_invalid_video() -> None:
    # 200,000 brackets fit the header's size limit; json raises RecursionError on them,
    # which is no ValueError: it escaped as a server error (a 500, a job's full refund).
    script = (
        "import sys\n"
        "from bgsvc.video import protocol\n"
        "protocol.read(sys.stdin.buffer, 0); protocol.read(sys.stdin.buffer, 1 << 30)\n"
        "meta = b'[' * 200000\n"
        "sys.stdout.buffer.write(protocol.HEAD.pack(b'I', len(meta), 0) + meta)\n"
        "sys.stdout.buffer.flush()\n"
    )
    command = (sys.executable, "-c", script)
    with pytest.raises(InvalidVideo):
        probe(config(command, timeout=10), clip("mp4"))
    first_answer_fails(command, InvalidVideo)


def test_a_probe_that_hangs_is_killed_at_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(VideoTimedOut):
        probe(config(HANG), clip("mp4"))
    assert time.monotonic() - started < 10


def test_a_probe_reads_the_headers_in_the_child() -> None:
    info, size = probe(config(timeout=30), clip("mp4", size=(66, 50)))
    assert (info.width, info.height, info.frames, info.fps) == (66, 50, 10, 25)
    assert size == (66, 50)


def test_the_child_holds_itself_to_its_memory_limit() -> None:
    small = ChildConfig(
        mode="probe",
        limits=LIMITS,
        memory_bytes=64 * 1024**2,
        cpu_s=5,
        step_timeout_s=30,
        max_upload_bytes=10**7,
    )
    # Importing PyAV alone needs more address space than that: the limit holds before
    # any byte of the upload is read.
    with pytest.raises(InvalidVideo):
        probe(small, clip("mp4"))


HOSTILE = Path(__file__).with_name("hostile_child.py")


def test_a_probe_child_that_floods_its_answer_costs_the_parent_one_answer() -> None:
    # 64 MiB where one short message is due: the serving process keeps at most one
    # answer's worth, however much the child writes.
    command = (sys.executable, str(HOSTILE), "flood")
    tracemalloc.start()
    try:
        with pytest.raises((InvalidVideo, VideoTimedOut)):
            probe(config(command, timeout=10), clip("mp4"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024**2


def test_closing_a_child_with_frames_unread_reaps_it_at_once() -> None:
    # A job that fails (or is cancelled) mid-video leaves the child's frames unread: the
    # pipe's reader, paused on a full buffer, would never see the pipe close, and
    # asyncio's wait() waits for that, holding the job's slot to close()'s deadline.
    command = (sys.executable, str(HOSTILE), "endless")

    async def run() -> tuple[MediaChild, float]:
        child = await MediaChild.start(config(command, timeout=10), clip("mp4"))
        await child.receive(0)
        await asyncio.sleep(0.5)  # the child fills the pipe and the reader's buffer
        started = time.monotonic()
        await child.close()
        return child, time.monotonic() - started

    child, seconds = asyncio.run(run())
    assert seconds < 2
    assert child.proc.returncode is not None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_a_child_takes_the_processes_it_started_with_it(tmp_path: Path) -> None:
    # A decoder exploit in the child starts a process of its own: killing the child
    # alone would leave it running on, outside every job.
    pidfile = tmp_path / "grandchild"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )

    async def run() -> None:
        child = await MediaChild.start(config((sys.executable, "-c", script), 1), clip("mp4"))
        try:
            with pytest.raises(VideoTimedOut):
                await child.receive(0)
        finally:
            await child.close()

    asyncio.run(run())
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(grandchild)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


@pytest.mark.parametrize("way", ["probe", "run"])
def test_a_child_sees_none_of_the_servers_secrets(
    way: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Code a decoder exploit runs in the child could read its environment: the server's
    # holds its keys and credentials.
    monkeypatch.setenv("BGSVC_API_KEYS", "sk-secret")
    monkeypatch.setenv("BGSVC_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0")
    seen = tmp_path / "environ.json"
    write = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    command = (sys.executable, "-c", write, str(seen))

    if way == "probe":
        with pytest.raises(InvalidVideo):
            probe(config(command), clip("mp4"))
    else:
        first_answer_fails(command, InvalidVideo)
    environ = json.loads(seen.read_text())
    assert "sk-secret" not in seen.read_text() and "hunter2" not in seen.read_text()
    assert not any(name.startswith("BGSVC_") for name in environ)
    assert environ["PATH"] == os.environ["PATH"]
    assert environ["OPENBLAS_NUM_THREADS"] == "1"
