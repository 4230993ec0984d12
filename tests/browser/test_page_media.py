"""The page with moving pictures: an animation too long for one request, and a video, go
to the job queue and come back moving (the video as a WebM with alpha that Chromium plays)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.browser.test_page import result_bytes, upload, wait_state

pytestmark = pytest.mark.browser

# More than BGSVC_SYNC_MAX_FRAMES (12): POST /remove-background answers 413 too_many_frames.
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


# The result loops while the test looks at it. Each wait polls the element's state with a
# deadline instead of awaiting an event: the loop's own seek back to the start drops
# readyState below HAVE_CURRENT_DATA for a moment, and "loadeddata" never fires twice, so
# a wait for it begun in that moment would never end (Playwright's evaluate has no timeout).
VIDEO_WAIT_MS = 20_000
FIRST_FRAME_PIXELS = """async (video, waitMs) => {
    const until = async (what, ok) => {
        const deadline = performance.now() + waitMs;
        while (!ok()) {
            if (performance.now() > deadline) {
                throw new Error(`video never ${what}: readyState ${video.readyState}, ` +
                    `seeking ${video.seeking}, currentTime ${video.currentTime}, ` +
                    `error ${video.error && video.error.code}`);
            }
            await new Promise((tick) => setTimeout(tick, 20));
        }
    };
    await until("had a frame", () => video.readyState >= 2);
    video.pause();
    video.currentTime = 0;
    await until("showed its first frame",
        () => !video.seeking && video.readyState >= 2 && video.currentTime === 0);
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(video, 0, 0);
    const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data);
    return { size: [video.videoWidth, video.videoHeight], corner: at(2, 2), box: at(36, 32) };
}"""


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


def test_a_video_runs_as_a_job_and_its_cutout_plays_with_alpha(page: Any) -> None:
    from tests.videos import clip

    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    upload(page, ("clip.mp4", clip("mp4", size=(96, 64), frames=10), "video/mp4"))
    c = wait_state(page, "clip.mp4", "done")

    posts = [r.split("?")[0].rsplit("/", 1)[-1] for r in requests if r.startswith("POST")]
    assert posts == ["jobs"]
    after = c.locator("video.after")
    # Chromium plays the WebM (VP9 with alpha) and, drawn on a canvas, its alpha is there.
    # The tiny model's matte is sigmoid(8 x mean brightness): about 92 on the blue ground
    # and 196 on the yellow box (a video without alpha would be 255 everywhere).
    pixels = after.evaluate(FIRST_FRAME_PIXELS, VIDEO_WAIT_MS)
    assert pixels["size"] == [96, 64]
    assert abs(pixels["corner"][3] - 92) <= 12, pixels
    assert abs(pixels["box"][3] - 196) <= 12, pixels
    assert "WebM" in c.locator(".out-size").inner_text()
    assert c.locator(".download").get_attribute("download") == "clip-nobg.webm"
