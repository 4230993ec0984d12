"""Turns between keys on one node: key A queues a batch, key B queues one job just after
it; when does B's job start? Embedded mode, and with --redis the shared mode on a
throwaway redis-server.

    python -m benchmarks.turns [--items 30] [--redis]

`bgsvc serve` with the default model, keys required, result cache off, every upload
unique. Reports how many of A's jobs started before B's, B's wait from submission to start,
and A's batch from submission to its last start. Appends to
benchmarks/raw/<date>-turns.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from benchmarks.jobs import _multipart, _redis, _request, _seconds, _wait_job, unique_jpegs
from benchmarks.nodes import Node
from benchmarks.plan import HERE, cores
from benchmarks.service import node_env

PEPPER = "bench-turns-pepper-0123456789"


def _photo() -> bytes:
    image = Image.new("RGB", (640, 480), (40, 120, 200))
    ImageDraw.Draw(image).ellipse((200, 100, 440, 420), fill=(230, 190, 150))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _key(env: dict[str, str], name: str) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "bgsvc", "keys", "create", name, "--quota", "1000000/month"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


def measure(items: int, redis: bool) -> dict[str, Any]:
    photo = _photo()
    with (
        tempfile.TemporaryDirectory(prefix="bgsvc-turns-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        env = node_env(
            cores(),
            BGSVC_DATA_DIR=str(root / "data"),
            BGSVC_AUTH="required",
            BGSVC_AUTH_PEPPER=PEPPER,
            BGSVC_BATCH_MAX_ITEMS=str(max(100, items)),
        )
        if redis:
            (root / "redis").mkdir()
            env["BGSVC_REDIS_URL"] = stack.enter_context(_redis(root / "redis")).url
        a, b = _key(env, "a"), _key(env, "b")
        node = Node(env, root / "node.log")
        try:
            node.wait_ready()
            body, boundary = _multipart(
                [(f"{i}.jpg", p) for i, p in enumerate(unique_jpegs(photo, items, "a"))]
            )
            status, batch = _request(
                node.target,
                "POST",
                "/batches?format=png",
                body,
                {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-Api-Key": a},
            )
            assert status == 202, batch
            status, job = _request(
                node.target,
                "POST",
                "/jobs?format=png",
                unique_jpegs(photo, 1, "b")[0],
                {"Content-Type": "image/jpeg", "X-Api-Key": b},
            )
            assert status == 202, job
            b_done = _wait_job(node.target, job["id"], 600, {"X-Api-Key": b})
            a_done = [
                _wait_job(node.target, item["job_id"], 600, {"X-Api-Key": a})
                for item in batch["items"]
            ]
        finally:
            node.stop()
    b_start = _seconds(b_done["started_at"])
    a_starts = sorted(_seconds(j["started_at"]) for j in a_done)
    a_created = _seconds(a_done[0]["created_at"])
    return {
        "mode": "redis" if redis else "embedded",
        "a_items": items,
        "a_started_before_b": sum(1 for s in a_starts if s < b_start),
        "b_wait_s": b_start - _seconds(b_done["created_at"]),
        "a_last_start_after_submission_s": a_starts[-1] - a_created,
        "statuses": sorted({j["status"] for j in [*a_done, b_done]}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--redis", action="store_true")
    args = parser.parse_args(argv)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **measure(args.items, args.redis),
    }
    print(json.dumps(result, indent=1))
    raw = HERE / "raw" / f"{datetime.now(UTC):%Y-%m-%d}-turns.json"
    previous = json.loads(raw.read_text()) if raw.exists() else []
    raw.write_text(json.dumps([*previous, result], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
