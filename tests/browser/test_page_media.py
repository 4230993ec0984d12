"""The page with moving pictures: an animation too long for one request goes to the job
queue and comes back animated."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.browser.test_page import result_bytes, upload, wait_state

pytestmark = pytest.mark.browser

# More than BGSVC_SYNC_MAX_FRAMES (25): POST /remove-background answers 413 too_many_frames.
FRAMES = 30


def moving_disc_gif(frames: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A bright disc crossing a dark frame, one step a frame (no two frames alike)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    pictures = []
    for i in range(frames):
        cx = 16 + i * (w - 32) / max(1, frames - 1)
        disc = (xx - cx) ** 2 + (yy - h / 2) ** 2 < 12**2
        rgb = np.full((h, w, 3), 20, dtype=np.uint8)
        rgb[disc] = (240, 220, 90)
        pictures.append(Image.fromarray(rgb))
    buf = io.BytesIO()
    pictures[0].save(buf, "GIF", save_all=True, append_images=pictures[1:], duration=80, loop=0)
    return buf.getvalue()


def test_an_animation_beyond_the_request_frame_limit_goes_through_a_job(page: Any) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    upload(page, ("long.gif", moving_disc_gif(FRAMES), "image/gif"))
    c = wait_state(page, "long.gif", "done")

    posts = [r.split("?")[0].rsplit("/", 1)[-1] for r in requests if r.startswith("POST")]
    assert posts == ["remove-background", "jobs"]
    out = Image.open(io.BytesIO(result_bytes(page, "long.gif")))
    assert out.format == "GIF" and out.size == (96, 64)
    assert getattr(out, "n_frames", 1) == FRAMES
    assert "GIF" in c.locator(".out-size").inner_text()
