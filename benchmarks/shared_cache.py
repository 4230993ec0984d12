"""Cache-hit latency of the two result-cache levels, and a hit load with no failures.

    python -m benchmarks.shared_cache [--requests N] [--threads T]

Starts a throwaway redis-server on loopback (tests/redis_server.py) and one app in-process
(Starlette's TestClient, so no sockets between client and app: the numbers are the
service's own path plus Redis). The model is the tests' tiny one: a hit never runs it, and
the cached body is a real-size cutout (chelsea upscaled to 1734x1153, PNG ~ MB). Two
configurations: the local LRU alone, and Redis alone (result_cache_bytes=0, so every hit
is a Redis GET). Per level: N sequential hits (round trip and the server's own cache;dur
from Server-Timing, p50/p95/p99), then N hits from T threads (failures counted). Writes
benchmarks/out/shared_cache.json and prints a Markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image
from tests.models import TINY_SIZE, build_tiny_model
from tests.redis_server import RedisServer

from bgsvc.app import create_app
from bgsvc.config import Settings

OUT = Path(__file__).resolve().parent / "out"


def _photo() -> bytes:
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize((1734, 1153), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _server_cache_ms(timing: str) -> float:
    for part in timing.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == "cache":
            return float(dur)
    raise ValueError(f"no cache timing in {timing!r}")


def _run(settings: Settings, photo: bytes, requests: int, threads: int) -> dict[str, Any]:
    app = create_app(settings, on_load_failure=lambda: None)
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.05)

        def post() -> Any:
            return client.post("/remove-background", files={"file": ("c.jpg", photo)})

        first = post()
        assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
        round_trip, server = [], []
        for _ in range(requests):
            started = time.perf_counter()
            response = post()
            round_trip.append((time.perf_counter() - started) * 1000)
            assert response.headers.get("X-Cache") == "HIT"
            server.append(_server_cache_ms(response.headers["Server-Timing"]))

        failures = 0
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for response in pool.map(lambda _: post(), range(requests)):
                ok = response.status_code == 200 and response.content == first.content
                failures += not ok
        wall = time.perf_counter() - started
    return {
        "body_bytes": len(first.content),
        "round_trip_ms": {
            "p50": statistics.median(round_trip),
            "p95": _percentile(round_trip, 0.95),
            "p99": _percentile(round_trip, 0.99),
        },
        "server_cache_ms": {
            "p50": statistics.median(server),
            "p95": _percentile(server, 0.95),
            "p99": _percentile(server, 0.99),
        },
        "concurrent": {
            "threads": threads,
            "requests": requests,
            "failures": failures,
            "per_s": requests / wall,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    photo = _photo()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "tiny.onnx")
        (root / "redis").mkdir()
        redis = RedisServer(root / "redis")
        redis.start()
        try:
            base: dict[str, Any] = {
                "model_dir": root / "models",
                "default_model": "tiny",
                "custom_models": {
                    "tiny": {"path": model, "profile": "imgly", "input_size": TINY_SIZE}
                },
                "intra_op_threads": 1,
                "max_queue": 64,
                "access_log": False,
            }
            results["local"] = _run(Settings(**base), photo, args.requests, args.threads)
            results["redis"] = _run(
                Settings(**base, redis_url=redis.url, result_cache_bytes=0),
                photo,
                args.requests,
                args.threads,
            )
        finally:
            redis.stop()
    OUT.mkdir(exist_ok=True)
    (OUT / "shared_cache.json").write_text(json.dumps(results, indent=2))
    print(
        "| level | body bytes | round trip p50 / p95 / p99 ms | server cache;dur p50 / p95 / "
        f"p99 ms | {args.threads} threads: hits/s, failures |"
    )
    print("| --- | --- | --- | --- | --- |")
    for level, r in results.items():
        rt, sv, cc = r["round_trip_ms"], r["server_cache_ms"], r["concurrent"]
        print(
            f"| {level} | {r['body_bytes']:,} | {rt['p50']:.2f} / {rt['p95']:.2f} / "
            f"{rt['p99']:.2f} | {sv['p50']:.2f} / {sv['p95']:.2f} / {sv['p99']:.2f} | "
            f"{cc['per_s']:.0f}, {cc['failures']} of {cc['requests']} |"
        )


if __name__ == "__main__":
    main()
