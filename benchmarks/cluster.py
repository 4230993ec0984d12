"""The fleet: two nodes behind nginx at the load levels, and the chaos run
(benchmarks.chaos) when the plan has one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.chaos import chaos
from benchmarks.images import BenchImage, build_set
from benchmarks.nodes import ClusterProc, cluster_available
from benchmarks.plan import Plan, say
from benchmarks.service import node_env, run_levels, warm

# Four different 2 MP photographs for the chaos run's clients.
CHAOS_SET: tuple[tuple[str, float], ...] = (
    ("chelsea", 2.0),
    ("rocket", 2.0),
    ("astronaut", 2.0),
    ("coffee", 2.0),
)


def chaos_run(plan: Plan, out: Path) -> dict[str, Any]:
    """The fleet on the real model under load while nodes are killed (benchmarks.chaos)."""
    from bgsvc.cluster import ClusterError, find_nginx

    try:
        find_nginx()
    except ClusterError as exc:
        note = f"Chaos run skipped: {exc}."
        say(note)
        return {"skipped": True, "note": note}
    bodies = [im.data for im in build_set(CHAOS_SET, out / "images", duplicates=0)]
    say(f"chaos: {plan.chaos_seconds:.0f} s, kill -9 every {plan.chaos_interval:.0f} s")
    return chaos(out, bodies, plan.chaos_seconds, plan.chaos_interval, say)


def cluster(
    plan: Plan, images: list[BenchImage], out: Path, limit: float | None = None
) -> dict[str, Any]:
    why_not = cluster_available()
    if why_not is not None:
        note = f"Cluster part skipped: {why_not}."
        say(note)
        return {"skipped": True, "note": note}
    run_dir = out / "cluster"
    proc = ClusterProc(2, 1, 1, node_env(1), run_dir)
    try:
        proc.wait_ready()
        warm([proc.target], images[0].data)
        levels = run_levels(
            "cluster 2 nodes x 1 thread (nginx)", [proc.target], images, plan, limit
        )
    except RuntimeError as exc:
        note = f"Cluster part failed: {exc} (log: {proc.log_path})."
        say(note)
        return {"skipped": True, "note": note}
    finally:
        proc.stop()
    return {
        "levels": [lv.as_dict() for lv in levels],
        "note": "2 nodes (gunicorn, 1 worker x 1 thread each) behind nginx: rows "
        "'cluster ...' in the load table above.",
    }
