"""What one frame of an animation costs through POST /remove-background (the default
model and settings, in process, one request at a time): the basis of
BGSVC_SYNC_MAX_FRAMES and BGSVC_JOB_MAX_FRAMES.

    .venv/bin/python -m benchmarks.animated [--frames 20] [--size 480x320] [--runs 3]

The frames are scikit-image's cat (benchmarks/images.py) panned a few pixels a frame, so
each is a different picture, as in a real clip. A still of the same frame is timed
beside the animation: the per-frame cost is what the animation takes beyond it.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from PIL import Image

from benchmarks.images import sample


def clip(frames: int, size: tuple[int, int], fmt: str) -> bytes:
    """``frames`` views of the sample photo, panned 4 px a frame, as an animated ``fmt``."""
    w, h = size
    photo = sample("chelsea").resize((w + 4 * frames, h), Image.Resampling.LANCZOS)
    views = [photo.crop((4 * i, 0, 4 * i + w, h)) for i in range(frames)]
    buf = io.BytesIO()
    params = {"lossless": False, "quality": 90} if fmt == "WEBP" else {}
    views[0].save(
        buf, fmt, save_all=frames > 1, append_images=views[1:], duration=80, loop=0, **params
    )
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", default="480x320")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    from fastapi.testclient import TestClient

    from bgsvc.app import create_app
    from bgsvc.config import Settings

    # The result cache off: the same body again would be a hit, not a removal.
    settings = Settings(sync_max_frames=max(args.frames, 1), result_cache_bytes=0)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        for fmt in ("GIF", "WEBP"):
            still, animated = clip(1, (w, h), fmt), clip(args.frames, (w, h), fmt)
            timed: dict[str, list[float]] = {"still": [], "animation": []}
            for _ in range(args.runs + 1):  # the first of each is a warm-up
                for name, body in (("still", still), ("animation", animated)):
                    t0 = time.perf_counter()
                    r = client.post("/remove-background", files={"file": ("a", body)})
                    timed[name].append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
            one = statistics.median(timed["still"][1:])
            whole = statistics.median(timed["animation"][1:])
            per_frame = (whole - one) / max(1, args.frames - 1)
            print(
                f"{fmt} {w}x{h}: still {one * 1000:.0f} ms, {args.frames} frames "
                f"{whole * 1000:.0f} ms, {per_frame * 1000:.0f} ms a frame beyond the first "
                f"(median of {args.runs}; engine {settings.engine}, model "
                f"{settings.default_model})"
            )


if __name__ == "__main__":
    main()
