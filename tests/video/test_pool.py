"""Encoding children kept between segments: one serves segment after segment while it
is wanted, and none outlives a failure, its keep, or the process's close."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from bgsvc import service_video
from bgsvc.config import Settings
from bgsvc.errors import InvalidVideo
from bgsvc.imaging.video import stream_params_ok
from bgsvc.service_video import EncoderFailed
from bgsvc.video import pool as pool_module
from bgsvc.video.pool import EncoderPool
from bgsvc.video.sandbox import MediaChild, child_config

SIZE = (64, 48)
STREAM = {"time_base": [1, 24], "rate": [24, 1], "colour": {}}


def make_pool(keep_s: float = 30.0) -> EncoderPool:
    return EncoderPool(child_config(Settings(), "encode"), keep_s)


async def encode(child: MediaChild, frames: int, stream: dict[str, Any] = STREAM) -> bytes:
    """``frames`` frames of RGBA through ``child``: the encoded segment."""
    await child.send(
        "B", {"format": "webm", "pixels": "RGBA", "size": list(SIZE), "stream": stream}
    )
    assert (await child.receive(0)).kind == "A"
    for index in range(frames):
        pixels = np.full((SIZE[1], SIZE[0], 4), 30 * index, np.uint8)
        await child.send("R", {"pts": index}, pixels.data)
    await child.send("Q", {})
    done = await child.receive(1 << 24)
    assert done.kind == "D"
    assert done.meta == {"frames": frames}
    return done.payload


def frames_in(body: bytes) -> int:
    with av.open(io.BytesIO(body)) as container:
        return sum(1 for _ in container.decode(video=0))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


def test_a_kept_encoder_encodes_the_next_segment_in_the_same_process() -> None:
    async def body() -> None:
        pool = make_pool()
        pids = []
        for frames in (3, 5):
            async with pool.encoder() as child:
                pids.append(child.proc.pid)
                assert frames_in(await encode(child, frames)) == frames
        assert pids[0] == pids[1]
        assert pool.idle == 1
        await pool.aclose()
        assert pool.idle == 0
        assert gone(pids[0])

    run(body)


def test_with_no_keep_every_segment_gets_a_child_of_its_own() -> None:
    async def body() -> None:
        pool = make_pool(keep_s=0)
        pids = []
        for _ in range(2):
            async with pool.encoder() as child:
                pids.append(child.proc.pid)
                await encode(child, 2)
        assert pids[0] != pids[1]
        assert pool.idle == 0
        assert all(gone(pid) for pid in pids)

    run(body)


def test_an_encoder_whose_segment_failed_is_killed_not_kept() -> None:
    async def body() -> None:
        pool = make_pool()
        with pytest.raises(RuntimeError):
            async with pool.encoder() as child:
                pid = child.proc.pid
                # Cut off mid-segment (a failed forward pass, a cancelled job): whatever
                # the child holds of it must not reach the next segment.
                await child.send(
                    "B", {"format": "webm", "pixels": "RGBA", "size": [64, 48], "stream": STREAM}
                )
                raise RuntimeError("the segment failed")
        assert pool.idle == 0
        assert gone(pid)
        async with pool.encoder() as child:
            assert child.proc.pid != pid
            assert frames_in(await encode(child, 2)) == 2
        await pool.aclose()

    run(body)


def test_an_idle_encoder_is_closed_when_its_keep_runs_out() -> None:
    async def body() -> None:
        pool = make_pool(keep_s=0.2)
        async with pool.encoder() as child:
            pid = child.proc.pid
            await encode(child, 1)
        assert pool.idle == 1
        for _ in range(100):
            await asyncio.sleep(0.05)
            if gone(pid):
                break
        assert pool.idle == 0
        assert gone(pid)
        await pool.aclose()

    run(body)


def test_no_more_than_two_encoders_wait_idle() -> None:
    async def body() -> None:
        pool = make_pool()

        async def segment() -> int:
            async with pool.encoder() as child:
                await encode(child, 1)
                await asyncio.sleep(0.2)  # all three held at once
                return child.proc.pid

        pids = await asyncio.gather(segment(), segment(), segment())
        assert len(set(pids)) == 3
        assert pool.idle == pool_module.MOST_IDLE == 2
        assert sum(gone(pid) for pid in pids) == 1
        await pool.aclose()

    run(body)


def test_an_encoder_replaced_after_its_segments_are_used_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "SEGMENTS_PER_CHILD", 2)

    async def body() -> None:
        pool = make_pool()
        pids = []
        for _ in range(3):
            async with pool.encoder() as child:
                pids.append(child.proc.pid)
                await encode(child, 1)
        assert pids[0] == pids[1] != pids[2]
        assert gone(pids[0])
        await pool.aclose()

    run(body)


@pytest.mark.parametrize(
    "stream",
    [
        {"time_base": [0, 1], "rate": None, "colour": {}},
        {"time_base": [1, 2**40], "rate": None, "colour": {}},
        {"time_base": None, "rate": ["24", 1], "colour": {}},
        {"time_base": [1, 24], "rate": [24, 1, 1], "colour": {}},
        {"time_base": [1, 24], "rate": [24, 1], "colour": {"colorspace": "bt709"}},
        {"time_base": [1, 24], "rate": [24, 1]},
        [],
    ],
)
def test_stream_parameters_no_honest_decoder_sends_are_refused(stream: Any) -> None:
    # They come from the segment's decoding child, which a decoder exploit may run, and
    # go to an encoder that serves other videos after it.
    assert not stream_params_ok(stream)
    assert stream_params_ok(STREAM)
    assert stream_params_ok({"time_base": None, "rate": None, "colour": {"colorspace": 1}})


def test_an_encoder_given_a_broken_time_base_says_so_and_is_not_kept() -> None:
    async def body() -> None:
        pool = make_pool()
        with pytest.raises(InvalidVideo, match="time base"):
            async with pool.encoder() as child:
                await encode(child, 1, {"time_base": [1, 0], "rate": None, "colour": {}})
        assert pool.idle == 0
        await pool.aclose()

    run(body)


def minor_faults(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[7])


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux's /proc only")
def test_a_kept_encoder_reuses_its_memory_for_the_next_segment() -> None:
    # What keeping one is for: at 720p and up libvpx's token buffers pass glibc's largest
    # mmap threshold, and were mapped and faulted in afresh for every segment.
    size = (1280, 720)
    frame = np.full((size[1], size[0], 4), 200, np.uint8)

    async def segment(child: MediaChild) -> int:
        before = minor_faults(child.proc.pid)
        await child.send(
            "B", {"format": "webm", "pixels": "RGBA", "size": list(size), "stream": STREAM}
        )
        assert (await child.receive(0)).kind == "A"
        for index in range(2):
            await child.send("R", {"pts": index}, frame.data)
        await child.send("Q", {})
        assert (await child.receive(1 << 26)).kind == "D"
        return minor_faults(child.proc.pid) - before

    async def body() -> None:
        pool = make_pool()
        faults = []
        for _ in range(2):
            async with pool.encoder() as child:
                faults.append(await segment(child))
        await pool.aclose()
        # The first segment maps its encoders' memory (two, for colour and alpha); the
        # second finds it in the heap, and faults in at most the frames it is sent.
        assert faults[0] > 20_000
        assert faults[1] < 6_000

    run(body)


def begin_message(stream: dict[str, Any] = STREAM) -> dict[str, Any]:
    return {"format": "webm", "pixels": "RGBA", "size": list(SIZE), "stream": stream}


def test_a_kept_encoder_that_died_is_the_services_failure_not_the_videos() -> None:
    # Killed while kept (the OOM killer picks the largest process): the next tenant's
    # segment is retried as a server error, not failed as a broken file, and finds out
    # before its frames run through the model.
    async def body() -> None:
        pool = make_pool()
        async with pool.encoder() as child:
            await encode(child, 1)
            victim = child.proc.pid
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(EncoderFailed):
            async with pool.encoder() as child:
                await service_video._begin(child, begin_message())
        async with pool.encoder() as child:
            assert child.proc.pid != victim
            await service_video._begin(child, begin_message())
            await child.send("Q", {})
            assert (await child.receive(1 << 24)).meta == {"frames": 0}
        await pool.aclose()

    run(body)


def test_a_time_base_the_codec_refuses_is_the_videos_4xx_before_any_frame() -> None:
    # Within what the parent accepts from a decoder, but not what libvpx opens: said
    # when the segment begins, not after its frames have cost the model.
    async def body() -> None:
        pool = make_pool()
        refused = {"time_base": [1, 2**31 - 1], "rate": [24, 1], "colour": {}}
        assert stream_params_ok(refused)
        with pytest.raises(InvalidVideo, match="timing"):
            async with pool.encoder() as child:
                await service_video._begin(child, begin_message(refused))
        assert pool.idle == 0
        await pool.aclose()

    run(body)


def test_an_encoder_left_holding_much_memory_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 4K encoder, or a ProRes or PNG segment's frames, leave the heap it keeps far
    # larger than a 1080p VP9 encoder's.
    monkeypatch.setattr(pool_module, "KEEP_MOST_BYTES", 1024 * 1024)

    async def body() -> None:
        pool = make_pool()
        async with pool.encoder() as child:
            await encode(child, 1)
            pid = child.proc.pid
        assert pool.idle == 0
        assert gone(pid)

    run(body)


def test_a_closed_pool_keeps_no_encoder_it_gets_back() -> None:
    async def body() -> None:
        pool = make_pool()
        async with pool.encoder() as child:
            await pool.aclose()  # the worker stops while a segment runs
            await encode(child, 1)
            pid = child.proc.pid
        assert pool.idle == 0
        assert gone(pid)

    run(body)


def test_an_encoder_that_dies_mid_segment_fails_it_at_that_frame_as_the_services() -> None:
    # Not at the segment's end, after every frame left has cost a forward pass; and not
    # as the tenant's broken file.
    async def body() -> None:
        pool = make_pool()
        frame = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
        with pytest.raises(EncoderFailed):
            async with pool.encoder() as child:
                await service_video._begin(child, begin_message())
                await service_video._encode(child, frame, 0)
                os.kill(child.proc.pid, signal.SIGKILL)
                await child.proc.wait()
                for index in range(1, 4):
                    await service_video._encode(child, frame, index)
                raise AssertionError("every frame was taken by a dead child")
        assert pool.idle == 0
        await pool.aclose()

    run(body)
