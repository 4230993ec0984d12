"""Pure measurement maths: percentiles, Server-Timing parsing and per-run summaries.

No I/O here, so tests/benchmarks can check it in milliseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_TIMING_ITEM = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:;(.*))?$")
_DUR = re.compile(r"(?:^|;)\s*dur\s*=\s*\"?([0-9.eE+-]+)\"?")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default), so small samples give stable, comparable figures."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing`` entries as seconds by name; entries without ``dur`` are skipped."""
    timings: dict[str, float] = {}
    if not header:
        return timings
    for item in header.split(","):
        match = _TIMING_ITEM.match(item)
        if match is None:
            continue
        name, params = match.group(1), match.group(2) or ""
        dur = _DUR.search(params)
        if dur is None:
            continue
        try:
            timings[name] = float(dur.group(1)) / 1000.0
        except ValueError:
            continue
    return timings


@dataclass
class Sample:
    """One request as the load generator saw it."""

    started: float
    latency: float
    status: int
    stages: dict[str, float] = field(default_factory=dict)
    cache: str | None = None


@dataclass
class LoadSummary:
    """What one load level produced: throughput, latency percentiles, errors and stages."""

    label: str
    concurrency: int
    requests: int
    ok: int
    rejected: int
    errors: int
    wall_seconds: float
    throughput: float
    p50: float
    p95: float
    p99: float
    mean: float
    rejected_p50: float
    stages: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def summarise(label: str, concurrency: int, samples: Sequence[Sample]) -> LoadSummary:
    """Throughput counts successful responses over the span from the first start to the
    last finish; 429s are counted apart from errors (they are the designed answer)."""
    ok = [s for s in samples if 200 <= s.status < 300]
    rejected = [s for s in samples if s.status == 429]
    errors = len(samples) - len(ok) - len(rejected)
    if samples:
        first = min(s.started for s in samples)
        last = max(s.started + s.latency for s in samples)
        wall = max(last - first, 1e-9)
    else:
        wall = 0.0
    latencies = [s.latency for s in ok]
    return LoadSummary(
        label=label,
        concurrency=concurrency,
        requests=len(samples),
        ok=len(ok),
        rejected=len(rejected),
        errors=errors,
        wall_seconds=wall,
        throughput=len(ok) / wall if wall else 0.0,
        p50=percentile(latencies, 50),
        p95=percentile(latencies, 95),
        p99=percentile(latencies, 99),
        mean=sum(latencies) / len(latencies) if latencies else math.nan,
        rejected_p50=percentile([s.latency for s in rejected], 50),
        stages=mean_stages(s.stages for s in ok),
    )


def mean_stages(stage_maps: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean seconds per stage over the responses that reported it, in first-seen order."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for stages in stage_maps:
        for name, seconds in stages.items():
            totals[name] = totals.get(name, 0.0) + seconds
            counts[name] = counts.get(name, 0) + 1
    return {name: totals[name] / counts[name] for name in totals}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys against xs (0 when undefined)."""
    n = len(xs)
    if n < 2 or n != len(ys):
        return 0.0
    mx = sum(xs) / n
    my = sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is zero."""
    if not denominator or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator
