"""Animated GIF, WebP and APNG through POST /remove-background: every frame cut out."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc.config import Settings
from bgsvc.inference.loader import load_engines
from bgsvc.pipeline import Predictor
from tests.conftest import encode_image, subject_image

DURATIONS = [40, 80, 120]
# Where the synthetic subject, a bright disc of radius 15, stands in each frame: far
# enough apart that the tiny model's blurred edge of one is background at the others.
CENTRES = [25, 60, 95]


def frame(centre_x: int) -> Image.Image:
    yy, xx = np.mgrid[0:80, 0:120]
    disc = ((xx - centre_x) ** 2 + (yy - 40) ** 2) < 15**2
    return Image.fromarray(np.where(disc[..., None], 240, 20).astype(np.uint8).repeat(3, axis=2))


def animation(fmt: str, count: int = 3, **params: Any) -> bytes:
    frames = [frame(CENTRES[i % 3]) for i in range(count)]
    durations = [DURATIONS[i % 3] for i in range(count)]
    return encode_image(
        frames[0],
        fmt,
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
        **params,
    )


def frames_of(data: bytes) -> tuple[Image.Image, list[tuple[int, np.ndarray]]]:
    """The image and each frame's (duration, alpha) as a viewer would show them."""
    img = Image.open(io.BytesIO(data))
    out = []
    for index in range(getattr(img, "n_frames", 1)):
        img.seek(index)
        rgba = img.convert("RGBA")
        out.append((round(img.info.get("duration", 0)), np.asarray(rgba)[..., 3].copy()))
    return img, out


def assert_subject_cut_out_in_every_frame(frames: list[tuple[int, np.ndarray]]) -> None:
    assert [duration for duration, _ in frames] == DURATIONS
    for (_, alpha), centre in zip(frames, CENTRES, strict=True):
        assert alpha[40, centre] > 200
        # The other frames' subject positions and the corners are background here.
        for other in CENTRES:
            if other != centre:
                assert alpha[40, other] < 30
        assert alpha[2, 2] < 30 and alpha[77, 117] < 30


def post(client: TestClient, data: bytes, query: str = "") -> Any:
    return client.post(f"/remove-background{query}", files={"file": ("a", data)})


@pytest.mark.parametrize(
    ("source", "params", "media_type", "kind"),
    [
        ("GIF", {}, "image/gif", "GIF"),
        ("WEBP", {"lossless": True}, "image/webp", "WEBP"),
        ("PNG", {}, "image/png", "PNG"),
    ],
)
def test_an_animation_comes_back_as_the_same_kind_with_every_frame_cut_out(
    client: TestClient, source: str, params: dict[str, Any], media_type: str, kind: str
) -> None:
    r = post(client, animation(source, **params))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media_type
    img, frames = frames_of(r.content)
    assert img.format == kind and len(frames) == 3 and img.size == (120, 80)
    assert img.info["loop"] == 0
    assert_subject_cut_out_in_every_frame(frames)
    levels = {int(a) for _, alpha in frames for a in np.unique(alpha)}
    if kind == "GIF":
        # A GIF's alpha is one bit: the matte cut at half.
        assert levels == {0, 255}
    else:
        assert any(0 < a < 255 for a in levels)


def test_a_gif_comes_back_as_an_animated_webp_when_asked(client: TestClient) -> None:
    r = post(client, animation("GIF"), "?format=webp")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    img, frames = frames_of(r.content)
    assert img.format == "WEBP" and len(frames) == 3 and img.info["loop"] == 0
    assert_subject_cut_out_in_every_frame(frames)


def test_a_gif_comes_back_as_an_apng_when_png_is_asked(client: TestClient) -> None:
    r = post(client, animation("GIF"), "?format=png")
    img, frames = frames_of(r.content)
    assert img.format == "PNG" and getattr(img, "is_animated", False)
    assert_subject_cut_out_in_every_frame(frames)


def test_a_gif_played_once_stays_played_once(client: TestClient) -> None:
    frames = [frame(x) for x in CENTRES]
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    img, _ = frames_of(post(client, data).content)
    assert "loop" not in img.info


def test_an_animation_over_a_colour_is_opaque_in_every_frame(client: TestClient) -> None:
    r = post(client, animation("GIF"), "?bg_color=%2300ff00")
    _, frames = frames_of(r.content)
    assert len(frames) == 3 and all(alpha.min() == 255 for _, alpha in frames)


def test_an_animation_cannot_come_back_as_jpeg(client: TestClient) -> None:
    r = post(client, animation("GIF"), "?format=jpg")
    assert r.status_code == 400 and r.json()["code"] == "invalid_parameter"
    assert "gif" in r.json()["message"]


def test_a_still_gif_still_returns_a_still_png(client: TestClient) -> None:
    r = post(client, encode_image(subject_image(), "GIF"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.mode == "RGBA" and not getattr(img, "is_animated", False)


def test_a_still_can_come_back_as_a_gif_with_one_bit_alpha(client: TestClient) -> None:
    r = post(client, encode_image(subject_image()), "?format=gif")
    assert r.headers["content-type"] == "image/gif"
    alpha = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3]
    assert set(np.unique(alpha)) == {0, 255}
    assert alpha[40, 60] == 255 and alpha[2, 2] == 0


def test_the_rembg_dialect_keeps_the_first_frame(client: TestClient) -> None:
    r = client.post("/api/remove", files={"file": ("a.gif", animation("GIF"))})
    assert r.status_code == 200
    img = Image.open(io.BytesIO(r.content))
    assert not getattr(img, "is_animated", False)


def test_more_frames_than_a_request_takes_is_refused_naming_jobs(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(sync_max_frames=2)
    r = post(client, animation("GIF"))
    assert r.status_code == 413
    assert r.json()["code"] == "too_many_frames"
    assert "POST /jobs" in r.json()["message"]


def test_more_pixels_over_all_frames_than_the_budget_is_refused(
    make_client: Callable[..., TestClient],
) -> None:
    # Each 120x80 frame is within 20,000 pixels; three of them are not.
    client = make_client(max_pixels=20_000)
    r = post(client, animation("WEBP"))
    assert r.status_code == 413
    assert r.json()["code"] == "too_many_frames"
    assert "POST /jobs" in r.json()["message"]


def gif_of_tiny_frames(count: int) -> bytes:
    """A GIF of ``count`` 1x1 frames, written block by block (Pillow would take minutes)."""
    header = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    one = (
        b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # 100 ms
        + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"
        + b"\x02\x02\x44\x01\x00"  # LZW: clear, pixel 0, end
    )
    return header + loop + one * count + b"\x3b"


def test_a_gif_of_a_hundred_thousand_tiny_frames_is_refused(client: TestClient) -> None:
    data = gif_of_tiny_frames(100_000)
    opened = Image.open(io.BytesIO(gif_of_tiny_frames(3)))
    assert opened.n_frames == 3  # the blocks are a GIF Pillow reads
    r = post(client, data)
    assert r.status_code == 413
    assert r.json()["code"] == "too_many_frames"


def test_a_truncated_animated_gif_is_an_invalid_image(client: TestClient) -> None:
    data = animation("GIF")
    r = post(client, data[: len(data) - 40])
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_image"


def test_a_gif_frame_far_larger_than_its_picture_is_refused_unread(client: TestClient) -> None:
    # Answered from the header walk: before, Pillow grew the picture to the frame at its
    # seek and the request decoded it (13,000 px: 200 after 14 s and 2 GB).
    from tests.imaging.test_animation import gif_of_two_frames

    r = post(client, gif_of_two_frames((100, 100), (6_000, 6_000)))
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "too_many_frames"


class CountingEngine:
    """Wraps a real engine; counts forward passes and the most ever running at once."""

    def __init__(self, inner: Predictor) -> None:
        self.inner, self.name = inner, inner.name
        self.calls = self.running = self.peak = 0
        self.lock = threading.Lock()

    def predict(self, rgb: Image.Image) -> np.ndarray:
        with self.lock:
            self.calls += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.005)
            return self.inner.predict(rgb)
        finally:
            with self.lock:
                self.running -= 1


def counting_loader(settings: Settings) -> Mapping[str, Predictor]:
    return {n: CountingEngine(e) for n, e in load_engines(settings).items()}


def test_an_animation_runs_one_frame_at_a_time_with_slots_to_spare(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(loader=counting_loader, max_concurrency=2)
    r = post(client, animation("GIF", count=6))
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).n_frames == 6
    engine = client.app.state.bgsvc.engines["tiny"]  # type: ignore[attr-defined]
    assert engine.calls == 6 and engine.peak == 1


def test_every_frame_runs_under_the_one_place_the_request_was_admitted_with(
    make_client: Callable[..., TestClient],
) -> None:
    # One place in all: a frame that asked for another would be refused with 429.
    client = make_client(max_concurrency=1, max_queue=0)
    r = post(client, animation("WEBP", count=6, lossless=True))
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).n_frames == 6
    assert client.app.state.bgsvc.scheduler.admitted == 0  # type: ignore[attr-defined]


def test_an_animation_cannot_be_cropped(client: TestClient) -> None:
    r = post(client, animation("GIF"), "?crop=true")
    assert r.status_code == 400 and r.json()["code"] == "invalid_parameter"


def test_the_remove_bg_dialect_keeps_the_first_frame(client: TestClient) -> None:
    r = client.post(
        "/v1.0/removebg",
        files={"image_file": ("a.gif", animation("GIF"))},
        data={"format": "png"},
    )
    assert r.status_code == 200, r.text
    assert not getattr(Image.open(io.BytesIO(r.content)), "is_animated", False)


class SlowEngine:
    """Wraps a real engine; each forward pass takes ``delay`` seconds."""

    def __init__(self, inner: Predictor, delay: float) -> None:
        self.inner, self.name, self.delay = inner, inner.name, delay
        self.calls = 0

    def predict(self, rgb: Image.Image) -> np.ndarray:
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.predict(rgb)


def test_an_animation_past_the_request_budget_is_a_504_and_frees_its_place(
    make_client: Callable[..., TestClient],
) -> None:
    def load(settings: Settings) -> Mapping[str, Predictor]:
        return {n: SlowEngine(e, 0.05) for n, e in load_engines(settings).items()}

    client = make_client(loader=load, request_timeout_s=0.2)
    r = post(client, animation("GIF", count=12))
    assert r.status_code == 504 and r.json()["code"] == "timeout"
    scheduler = client.app.state.bgsvc.scheduler  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while scheduler.admitted and time.monotonic() < deadline:
        time.sleep(0.01)
    # The pass running at the deadline finished, and no later frame was started for it.
    assert scheduler.admitted == 0
    engine = client.app.state.bgsvc.engines["tiny"]  # type: ignore[attr-defined]
    started = engine.calls
    time.sleep(0.2)
    assert engine.calls == started < 12
    engine.delay = 0.0
    assert post(client, animation("GIF")).status_code == 200
