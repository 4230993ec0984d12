"""What a video costs as a job, end to end (the default model and settings, in process,
one job at a time): submission to a downloaded result, in frames a second.

    .venv/bin/python -m benchmarks.video [--frames 48] [--size 1280x720] [--format webm]

The clip is scikit-image's cat (benchmarks/images.py) panned a few pixels a frame at
24 fps, as H.264 in MP4: each frame a different picture, as in a real clip. The raw
numbers go to benchmarks/raw/<date>-video.json.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from benchmarks.images import sample


def clip(frames: int, size: tuple[int, int]) -> bytes:
    """``frames`` views of the sample photo, panned 4 px a frame, as H.264 at 24 fps with
    a key frame every second (as phones record)."""
    w, h = size
    photo = sample("chelsea").resize((w + 4 * frames, h), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(24), options={"crf": "20", "g": "24"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            view = np.asarray(photo.crop((4 * i, 0, 4 * i + w, h)))
            frame = av.VideoFrame.from_ndarray(view, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 24)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--format", default="webm")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    from fastapi.testclient import TestClient

    from bgsvc.app import create_app
    from bgsvc.config import Settings

    data = clip(args.frames, (w, h))
    settings = Settings(job_timeout_s=600, video_max_frames=max(args.frames, 1) + 10)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.perf_counter()
        files = {"file": ("clip.mp4", data, "video/mp4")}
        job = client.post("/jobs", params={"format": args.format}, files=files).json()
        while (status := client.get(job["status_url"]).json())["status"] in ("queued", "running"):
            time.sleep(0.2)
        assert status["status"] == "succeeded", status
        result = client.get(job["result_url"])
        seconds = time.perf_counter() - t0
    frames = status["frames_done"]
    row = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": f"{w}x{h}",
        "frames": frames,
        "format": args.format,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 2),
        "result_bytes": len(result.content),
        "engine": settings.engine,
        "model": settings.default_model,
    }
    print(json.dumps(row))
    raw = Path(__file__).parent / "raw" / f"{datetime.now(UTC):%Y-%m-%d}-video.json"
    rows = json.loads(raw.read_text()) if raw.exists() else []
    raw.write_text(json.dumps([*rows, row], indent=1) + "\n")


if __name__ == "__main__":
    main()
