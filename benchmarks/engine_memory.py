"""RSS of one serving process on the real model, per engine: once ready, and after N
mixed requests (0.3 to 12 MP JPEGs, PNG out, result cache off), at concurrency 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.images import FULL_SET, build_set
from benchmarks.load import closed_loop
from benchmarks.nodes import Node, rss_kib
from benchmarks.plan import cores, say
from benchmarks.service import node_env

ENGINES = ("openvino", "onnxruntime")


def engine_memory(out: Path, requests: int) -> dict[str, Any]:
    images = build_set(FULL_SET, out / "images", duplicates=0)
    bodies = [im.data for im in images]
    rows = []
    for engine in ENGINES:
        # MALLOC_ARENA_MAX as deploy/start.sh sets it for every served process.
        env = node_env(cores(), BGSVC_ENGINE=engine, MALLOC_ARENA_MAX="2")
        node = Node(env, out / "logs" / f"engine-memory-{engine}.log")
        try:
            node.wait_ready()
            ready = rss_kib(node.pid) / 1024
            samples = closed_loop([node.target], bodies, 2, requests)
            after = rss_kib(node.pid) / 1024
        finally:
            node.stop()
        failed = sum(1 for s in samples if s.status != 200)
        say(
            f"engine memory {engine}: {ready:.0f} MiB ready, {after:.0f} MiB after "
            f"{requests} requests ({failed} failed)"
        )
        rows.append(
            {
                "engine": engine,
                "rss_ready_mib": ready,
                "rss_after_mib": after,
                "requests": requests,
                "failed": failed,
            }
        )
    return {"rows": rows}
