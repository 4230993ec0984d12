"""A video's mattes smoothed from frame to frame (on by default), and each frame matted
alone, as a still, when smoothing is off."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc.config import Settings
from tests.jobs.test_video_jobs import run_video
from tests.videos import clip, decode, h264, zipped_alphas


def grainy_still_clip(frames: int = 12, size: tuple[int, int] = (96, 64)) -> bytes:
    """A scene that holds still (a bright disc on a dark ground, its edge soft) under
    fresh sensor grain every frame: any change of the matte from frame to frame is
    flicker. Near-lossless H.264, so the grain survives the encode."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    distance = np.hypot(xx - w / 2, yy - h / 2)
    soft = np.clip((h * 0.3 - distance) / 6 + 0.5, 0, 1)[..., None]
    scene = soft * 235 + (1 - soft) * 25
    pictures = []
    for i in range(frames):
        grain = np.random.default_rng(i).normal(0, 3, (h, w, 1))
        pictures.append(np.clip(scene + grain, 0, 255).astype(np.uint8).repeat(3, axis=2))
    return h264(pictures, crf=4, pix_fmt="yuv444p")


def flicker(alphas: list[np.ndarray]) -> float:
    """Mean absolute change of the matte from one frame to the next (0-255)."""
    steps = [np.abs(b.astype(int) - a.astype(int)).mean() for a, b in itertools.pairwise(alphas)]
    return float(np.mean(steps))


def test_video_smoothing_is_on_by_default() -> None:
    assert Settings().video_smoothing is True


def test_smoothing_steadies_the_matte_of_a_scene_that_holds_still(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    data = grainy_still_clip()
    _, alone = run_video(client, data, format="zip", smooth="false")
    _, smoothed = run_video(client, data, format="zip")
    alone_alphas, smoothed_alphas = zipped_alphas(alone.content), zipped_alphas(smoothed.content)
    assert len(alone_alphas) == len(smoothed_alphas) == 12
    assert flicker(alone_alphas) > 0.5, "the grain must make the frames' mattes differ"
    before, after = flicker(alone_alphas), flicker(smoothed_alphas)
    assert after < 0.75 * before, (before, after)
    # The subject is still matted: the disc kept, the corners not.
    last = smoothed_alphas[-1]
    assert last[32, 48] > 200 and last[2, 2] < 40


def test_with_smoothing_off_each_frame_is_matted_as_the_still_would_be(
    jobs_client: Callable[..., TestClient],
) -> None:
    client = jobs_client()
    data = clip("mp4", size=(64, 48), frames=6)
    _, result = run_video(client, data, format="zip", smooth="false")
    video_alphas = zipped_alphas(result.content)
    frames, _ = decode(data)
    assert len(video_alphas) == len(frames) == 6
    for frame, video_alpha in zip(frames, video_alphas, strict=True):
        png = io.BytesIO()
        Image.fromarray(frame.to_ndarray(format="rgb24")).save(png, "PNG")
        still = client.post("/remove-background", files={"file": ("f.png", png.getvalue())})
        assert still.status_code == 200, still.text
        still_alpha = np.asarray(Image.open(io.BytesIO(still.content)))[..., 3]
        # The same pixels through the same path: equal but for the colour conversion's
        # rounding (the child converts in the clip's own matrix, the test in PyAV's).
        assert np.abs(still_alpha.astype(int) - video_alpha.astype(int)).max() <= 2
