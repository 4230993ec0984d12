"""What a run does: the plan (how much of everything), the sections --only can pick,
the lengths the command line overrides, and the two helpers every section shares."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.images import FULL_SET, QUICK_SET

HERE = Path(__file__).resolve().parent
CONCURRENCY = (1, 2, 4, 8)


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does."""

    mode: str
    images: tuple[tuple[str, float], ...]
    limit_runs: int
    requests: dict[int, int]
    overload_seconds: float
    memory_requests: int
    layouts: tuple[str, ...]
    # Memory per worker over a long run (0: skipped).
    soak_requests: int = 0
    # Chaos run length and the time between kills (0 s: skipped).
    chaos_seconds: float = 0.0
    chaos_interval: float = 30.0
    # Jobs against the sync path (benchmarks/jobs.py): batch size, idle single jobs, and
    # the modes measured (embedded; redis = the node with its own BGSVC_REDIS_URL).
    jobs_items: int = 200
    jobs_idle: int = 50
    jobs_variants: tuple[str, ...] = ("embedded", "redis")


FULL = Plan(
    mode="full",
    images=FULL_SET,
    limit_runs=10,
    requests={1: 10, 2: 14, 4: 20, 8: 28},
    overload_seconds=40.0,
    memory_requests=1000,
    layouts=("1x2", "2x1"),
    soak_requests=20_000,
    chaos_seconds=300.0,
)
QUICK = Plan(
    mode="quick",
    images=QUICK_SET,
    limit_runs=3,
    requests={1: 4, 2: 4, 4: 6, 8: 8},
    overload_seconds=12.0,
    memory_requests=150,
    layouts=("1x2",),
    # A chaos run is only telling at length (several kills and recoveries of a node that
    # loads the real model): the quick run leaves it out unless --chaos-seconds asks.
    soak_requests=1000,
    chaos_seconds=0.0,
    jobs_items=20,
    jobs_idle=10,
)
# Sections that run on their own with --only.
SECTIONS = ("memory", "soak", "chaos", "cluster", "jobs", "engine-memory")


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def only_sections(text: str) -> tuple[str, ...]:
    """``--only``'s comma-separated section names, checked against SECTIONS."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none)'}; choose from "
            + ", ".join(SECTIONS)
        )
    return names


def plan_from(args: argparse.Namespace) -> Plan:
    """The quick or full plan with the lengths given on the command line."""
    plan = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.chaos_seconds is not None:
        changes["chaos_seconds"] = args.chaos_seconds
    if args.chaos_interval is not None:
        changes["chaos_interval"] = args.chaos_interval
    if args.soak_requests is not None:
        changes["soak_requests"] = args.soak_requests
    if args.jobs_batch is not None:
        changes["jobs_items"] = args.jobs_batch
    if args.jobs_idle is not None:
        changes["jobs_idle"] = args.jobs_idle
    if args.redis:
        changes["jobs_variants"] = ("redis",)
    elif args.only:
        # A part-run of jobs measures the embedded mode unless --redis asks for Redis.
        changes["jobs_variants"] = ("embedded",)
    return dataclasses.replace(plan, **changes)
