"""CPU time per image outside the model, per output format, from the service's own
Server-Timing: every stage except `inference` and `queue`, at c=1 on the 2 MP JPEG with
the result cache off (the bench's nodes run with it off)."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.images import BenchImage
from benchmarks.load import Target, closed_loop
from benchmarks.plan import say
from benchmarks.stats import Sample

FORMATS = ("png", "webp", "jpg")
# The model's own time and the wait for it; everything else is CPU work around it.
MODEL_STAGES = frozenset({"inference", "queue"})
SHOWN = ("decode", "preprocess", "mask", "postprocess", "encode")
# The image stages proper (bgsvc.imaging), apart from the model's pre/post-processing.
IMAGING = ("decode", "postprocess", "encode")


def outside_row(fmt: str, samples: list[Sample]) -> list[Any] | None:
    """One table row from one format's samples (only answered requests count), or None."""
    ok = [s for s in samples if s.status == 200 and s.stages]
    if not ok:
        return None
    outside = [sum(v for k, v in s.stages.items() if k not in MODEL_STAGES) * 1000 for s in ok]
    imaging = [sum(s.stages.get(k, 0.0) for k in IMAGING) * 1000 for s in ok]
    per_stage = [statistics.median(s.stages.get(k, 0.0) for s in ok) * 1000 for k in SHOWN]
    return [
        fmt,
        len(ok),
        statistics.median(outside),
        min(outside),
        statistics.median(imaging),
        *per_stage,
    ]


def outside_model(target: Target, image: BenchImage, requests: int) -> dict[str, Any]:
    """``requests`` sequential requests per format after one unmeasured one."""
    rows = []
    for fmt in FORMATS:
        path = f"/remove-background?format={fmt}"
        closed_loop([target], [image.data], 1, 1, path=path)
        row = outside_row(fmt, closed_loop([target], [image.data], 1, requests, path=path))
        if row is not None:
            rows.append(row)
            say(f"outside the model, {fmt}: median {row[2]:.1f} ms")
    headers = ["format", "requests", "outside median ms", "outside min ms"]
    headers += ["decode+postprocess+encode median ms"]
    headers += [f"{k} ms" for k in SHOWN]
    return {
        "table": {"headers": headers, "rows": rows},
        "note": (
            f"{image.name} {image.width}x{image.height} JPEG, c=1, result cache off; "
            "outside = the sum of Server-Timing stages except inference and queue "
            "(targets: png <= 30 ms, webp <= 150 ms)."
        ),
    }
