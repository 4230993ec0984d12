"""A video's frames per second against the same frames sent as photos, on one node.

    .venv/bin/python -m benchmarks.video_vs_images [--frames 60] [--size 1920x1080]
        [--seconds 15] [--rounds 2] [--poll 1]

`bgsvc serve` with the default model and settings (result cache off) on a free loopback
port. Each round: the clip's frames as JPEG photos to POST /remove-background (PNG out),
closed loop at 1 and 2 clients for --seconds each (images a second); then the clip as one
video job (webm), smoothing on and off, from submission to the job's end as its status
says (frames a second, the job's fixed costs included: reading the headers, starting the
media children, the last frame's encode), its status polled every --poll seconds. The
clip is benchmarks.video's (scikit-image's cat panned 4 px a frame). Writes
benchmarks/raw/<date>-video-vs-images.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.video import clip

BOUNDARY = "bgsvc-bench"


def post(base: str, path: str, data: bytes, content_type: str, query: str) -> bytes:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}{path}?{query}",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        out: bytes = response.read()
        return out


def _cpu() -> tuple[float, float]:
    """The machine's (busy, all) CPU seconds so far, from /proc/stat: what a phase kept
    busy, its children and the kernel included, and what it left idle."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def _measured(run: Any, items: int | None = None) -> tuple[float, dict[str, float]]:
    """``run()``'s rate, with the share of the machine it kept busy and the CPU seconds
    an item cost (busy time over items; ``items`` None: rate x duration)."""
    busy0, all0 = _cpu()
    started = time.monotonic()
    rate = run()
    elapsed = time.monotonic() - started
    busy1, all1 = _cpu()
    count = items if items is not None else rate * elapsed
    return rate, {
        "busy_share": (busy1 - busy0) / max(1e-9, all1 - all0),
        "cpu_s_per_item": (busy1 - busy0) / max(1, count),
    }


def _images_per_s(base: str, photos: list[bytes], clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            post(base, "/remove-background", photos[i % len(photos)], "image/jpeg", "format=png")
            done[k] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def _video_frames_per_s(base: str, data: bytes, frames: int, query: str, poll_s: float) -> float:
    """Frames a second from submission to the job's own ``finished_at``: the status is
    polled every ``poll_s`` as a client would (each poll is a request the node serves
    beside the video), and when the poll sees the end does not count."""
    started = time.time()
    job = json.loads(post(base, "/jobs", data, "video/mp4", query))
    while True:
        with urllib.request.urlopen(f"{base}{job['status_url']}", timeout=30) as r:
            status = json.loads(r.read())
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(poll_s)
    if status["status"] != "succeeded":
        raise RuntimeError(f"the video job ended {status['status']}: {status.get('error')}")
    finished = datetime.fromisoformat(status["finished_at"]).timestamp()
    return frames / (finished - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--poll",
        type=float,
        default=1.0,
        help="seconds between a video job's status polls (each a request the node serves)",
    )
    parser.add_argument(
        "--queries",
        default="format=webm,format=webm&smooth=false",
        help="the video jobs' query strings, comma-separated; the first is the one compared",
    )
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    queries = args.queries.split(",")

    from tests.videos import decode

    data = clip(args.frames, (w, h))
    pictures, _ = decode(data)
    photos = []
    for picture in pictures:
        buf = io.BytesIO()
        Image.fromarray(picture.to_ndarray(format="rgb24")).save(buf, "JPEG", quality=92)
        photos.append(buf.getvalue())

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="bgsvc-video-bench-"))
    env = dict(
        os.environ,
        BGSVC_PORT=str(port),
        BGSVC_RESULT_CACHE_BYTES="0",
        BGSVC_DATA_DIR=str(work),
        # The clip must fit one job attempt whatever its length here.
        BGSVC_JOB_TIMEOUT_S="1200",
        BGSVC_VIDEO_MAX_FRAMES=str(args.frames + 10),
        BGSVC_VIDEO_MAX_TOTAL_PIXELS=str((args.frames + 10) * w * h),
        BGSVC_VIDEO_MAX_DURATION_S="3600",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "bgsvc", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    rows: dict[str, list[float]] = {}
    usage: dict[str, list[dict[str, float]]] = {}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the node did not become ready") from None
                time.sleep(0.5)
        for photo in photos[:2]:
            post(base, "/remove-background", photo, "image/jpeg", "format=png")
        for round_ in range(args.rounds):
            for clients in (1, 2):
                value, use = _measured(
                    lambda c=clients: _images_per_s(base, photos, c, args.seconds)
                )
                rows.setdefault(f"photos, {clients} client(s), img/s", []).append(value)
                usage.setdefault(f"photos, {clients} client(s)", []).append(use)
                print(f"round {round_}: photos, c={clients}: {value:.2f} img/s {use}", flush=True)
            for query in queries:
                value, use = _measured(
                    lambda q=query: _video_frames_per_s(base, data, args.frames, q, args.poll),
                    args.frames,
                )
                rows.setdefault(f"video job [{query}], frames/s", []).append(value)
                usage.setdefault(f"video job [{query}]", []).append(use)
                print(f"round {round_}: video [{query}]: {value:.2f} frames/s {use}", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    photo_rows = [v for k, v in rows.items() if k.startswith("photos")]
    best_photos = max(max(v) for v in photo_rows)
    smoothed = rows[f"video job [{queries[0]}], frames/s"]
    # Each round's video against that round's best photo rate: the machine's speed drifts
    # between rounds, and a ratio within a round is the least disturbed by it.
    per_round = [video / max(v[i] for v in photo_rows) for i, video in enumerate(smoothed)]
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "size": f"{w}x{h}",
        "frames": args.frames,
        "segment_pixels": os.environ.get("BGSVC_VIDEO_SEGMENT_PIXELS", "default"),
        "poll_s": args.poll,
        "rows": rows,
        "machine": usage,
        "video_smoothed_best_over_photos_best": max(smoothed) / best_photos,
        "video_smoothed_over_photos_per_round": per_round,
        "median_per_round": statistics.median(per_round),
    }
    print(json.dumps(summary, indent=1))
    raw = Path(__file__).parent / "raw" / f"{datetime.now(UTC):%Y-%m-%d}-video-vs-images.json"
    previous = json.loads(raw.read_text()) if raw.exists() else []
    raw.write_text(json.dumps([*previous, summary], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
