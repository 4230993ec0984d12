"""Memory of one request by image size and kind: how much a serving process's resident
memory grows, at its peak, while it decodes and processes the largest images it accepts,
one at a time and several at once. It sizes BGSVC_MAX_PIXELS (docs/operations.md, "Limits
and memory").

    .venv/bin/python -m benchmarks.decode_memory                 # the sweep, cheap model
    .venv/bin/python -m benchmarks.decode_memory --model real    # the default model
    .venv/bin/python -m benchmarks.decode_memory --sizes 49 --kinds png-rgba --at-once 1,2,5

Each measurement is a fresh `bgsvc serve` (one process: what a gunicorn worker is, with
deploy/start.sh's MALLOC_ARENA_MAX=2) warmed with two small requests; then its peak RSS is
reset (/proc/PID/clear_refs), N identical requests are sent at once, and the peak (VmHWM)
less the RSS before them is the growth. Results go to OUT/decode_memory.json and a table
on stdout. Images are made once (smooth, so even 50 MP stays under the 25 MiB upload limit,
as a hostile client's would) in OUT/decode_memory/.

Results keep the source's size (up to BGSVC_MAX_OUTPUT_PIXELS), so decoding, the edge
step, the cutout and the encode all work at full size; only the model's input is made from
a working copy within BGSVC_MAX_EDGE. The cheap model (the default model's input and output
shapes, a trivial graph) gives the same growth as the real one for the size-dependent part
and starts in seconds; --model real shows the whole.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.memory import cheap_model
from benchmarks.nodes import Node
from benchmarks.plan import HERE

MIB = 1024 * 1024
# Every path of bgsvc.imaging.decode that costs memory in proportion to the pixels:
# RGB (decoded as 4 bytes a pixel), RGBA with real alpha (split, composited on white),
# 16-bit greyscale (scaled to 8 bits through float64), palette with transparency
# (expanded to RGBA), JPEG (decoded at a reduced scale, draft) and WebP with alpha, lossy
# and lossless.
KINDS = ("png-rgb", "png-rgba", "png-gray16", "png-palette", "jpeg", "webp-rgba", "webp-lossless")
SIZES_MP = (4, 12, 25, 36, 49)


@dataclass
class Result:
    model: str
    threads: int
    kind: str
    megapixels: float
    file_bytes: int
    at_once: int
    statuses: list[int]
    seconds: float
    rss_before_mib: float
    peak_mib: float
    growth_mib: float
    growth_per_request_mib: float
    bytes_per_pixel: float
    rss_after_mib: float


def _side(megapixels: float) -> tuple[int, int]:
    side = round((megapixels * 1e6) ** 0.5)
    return side, side


def make_image(kind: str, megapixels: float, folder: Path) -> Path:
    """A smooth ``kind`` image of ``megapixels``, made once."""
    ext = "jpg" if kind == "jpeg" else "webp" if kind.startswith("webp") else "png"
    path = folder / f"{kind}-{megapixels:g}mp.{ext}"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    w, h = _side(megapixels)
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    r = np.broadcast_to(x, (h, w)).astype(np.uint8)
    g = np.broadcast_to(y, (h, w)).astype(np.uint8)
    b = np.full((h, w), 90, np.uint8)
    if kind == "png-gray16":
        img = Image.fromarray(np.broadcast_to(x * 257, (h, w)).astype(np.uint16))  # I;16
    elif kind == "png-palette":
        img = Image.fromarray((r // 16 * 16 + g // 64).astype(np.uint8), "P")
        img.putpalette(list(range(256)) * 3)
        img.info["transparency"] = 0
    else:
        channels = [r, g, b]
        if kind in ("png-rgba", "webp-rgba", "webp-lossless"):
            # Alpha below 255 almost everywhere: the composite path, not the opaque one.
            channels.append((g // 2 + 64).astype(np.uint8))
        img = Image.fromarray(np.dstack(channels), "RGBA" if len(channels) == 4 else "RGB")
    if kind == "jpeg":
        img.save(path, "JPEG", quality=90)
    elif kind == "webp-rgba":
        img.save(path, "WEBP", quality=10, method=0)
    elif kind == "webp-lossless":
        img.save(path, "WEBP", lossless=True, quality=0, method=0)
    elif kind == "png-palette":
        img.save(path, "PNG", transparency=0, optimize=False)
    else:
        img.save(path, "PNG", compress_level=9)
    return path


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def _post(port: int, body: bytes, content_type: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(
            "POST",
            "/api/remove",
            body=body,
            headers={"Content-Type": content_type},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _small_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1200, 900), (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


def node_env(
    model: str, out: Path, at_once: int, max_pixels: int, threads: int = 0
) -> dict[str, str]:
    """One process serving like a gunicorn worker: admission room for ``at_once``
    requests, ``threads`` intra-op threads (0: ``at_once``, so the stage pool, which has
    max(2, threads) threads, decodes them all at once), the pixel limit out of the way."""
    env = {
        "MALLOC_ARENA_MAX": "2",
        "BGSVC_MAX_PIXELS": str(max_pixels),
        "BGSVC_RESULT_CACHE_BYTES": "0",
        "BGSVC_MAX_CONCURRENCY": "1",
        "BGSVC_MAX_QUEUE": str(max(4, at_once)),
        # The stage pool (decode, encode) has max(2, intra-op threads) threads.
        "BGSVC_INTRA_OP_THREADS": str(threads or max(1, at_once)),
        "BGSVC_REQUEST_TIMEOUT_S": "300",
        "BGSVC_WARMUP": "true",
    }
    if model == "cheap":
        path = cheap_model(out / "prepared", 1024)
        custom = {"cheap": {"path": str(path), "profile": "imgly", "input_size": 1024}}
        env |= {"BGSVC_CUSTOM_MODELS": json.dumps(custom), "BGSVC_DEFAULT_MODEL": "cheap"}
    return env


def measure(
    model: str,
    kind: str,
    megapixels: float,
    at_once: int,
    out: Path,
    max_pixels: int,
    threads: int = 0,
) -> Result:
    path = make_image(kind, megapixels, out / "decode_memory")
    body = path.read_bytes()
    content_type = {"jpg": "image/jpeg", "webp": "image/webp"}.get(path.suffix[1:], "image/png")
    env = node_env(model, out, at_once, max_pixels, threads)
    node = Node(env, out / "logs" / "decode_memory.log")
    try:
        node.wait_ready()
        small = _small_png()
        for _ in range(2):
            assert _post(node.target.port, small, "image/png") == 200, node.tail()
        time.sleep(0.5)
        before = _status_kib(node.pid, "VmRSS")
        Path(f"/proc/{node.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        statuses: list[int] = []
        lock = threading.Lock()

        def one() -> None:
            status = _post(node.target.port, body, content_type)
            with lock:
                statuses.append(status)

        started = time.perf_counter()
        threads = [threading.Thread(target=one) for _ in range(at_once)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        peak = _status_kib(node.pid, "VmHWM")
        time.sleep(0.5)
        after = _status_kib(node.pid, "VmRSS")
    finally:
        node.stop()
    w, h = _side(megapixels)
    growth = (peak - before) * 1024
    return Result(
        model=model,
        threads=int(env["BGSVC_INTRA_OP_THREADS"]),
        kind=kind,
        megapixels=round(w * h / 1e6, 2),
        file_bytes=len(body),
        at_once=at_once,
        statuses=sorted(statuses),
        seconds=round(seconds, 2),
        rss_before_mib=round(before / 1024, 1),
        peak_mib=round(peak / 1024, 1),
        growth_mib=round(growth / MIB, 1),
        growth_per_request_mib=round(growth / MIB / at_once, 1),
        bytes_per_pixel=round(growth / at_once / (w * h), 2),
        rss_after_mib=round(after / 1024, 1),
    )


def table(results: list[Result]) -> str:
    columns = (
        "model", "threads", "kind", "MP", "file", "at once", "status", "RSS before", "peak",
        "growth", "per request", "B/pixel", "RSS after",
    )  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        cells = (
            r.model, r.threads, r.kind, f"{r.megapixels:g}", f"{r.file_bytes / MIB:.1f} MiB",
            r.at_once, ",".join(map(str, sorted(set(r.statuses)))),
            f"{r.rss_before_mib:.0f} MiB", f"{r.peak_mib:.0f} MiB", f"{r.growth_mib:.0f} MiB",
            f"{r.growth_per_request_mib:.0f} MiB", f"{r.bytes_per_pixel:.1f}",
            f"{r.rss_after_mib:.0f} MiB",
        )  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["cheap", "real"], default="cheap")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES_MP)), help="megapixels")
    parser.add_argument("--at-once", default="1", help="requests sent together, e.g. 1,2,5")
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads; 0: as many as at once"
    )
    parser.add_argument("--max-pixels", type=int, default=100_000_000)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("needs Linux's /proc/PID/clear_refs to reset the peak RSS")
    results: list[Result] = []
    for kind in args.kinds.split(","):
        for size in (float(s) for s in args.sizes.split(",")):
            for at_once in (int(n) for n in args.at_once.split(",")):
                result = measure(
                    args.model, kind, size, at_once, args.out, args.max_pixels, args.threads
                )
                results.append(result)
                print(table([result]).splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "host": {"cores": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
        "results": [asdict(r) for r in results],
    }
    target = args.out / "decode_memory.json"
    previous = json.loads(target.read_text()) if target.is_file() else {"runs": []}
    previous.setdefault("runs", []).append(record)
    target.write_text(json.dumps(previous, indent=2))
    print(table(results))
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
