"""Write a run's results: JSON (everything), Markdown (the tables) and a PNG plot."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats get 3 decimals, NaN and None a dash."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}")
        lines.append("| " + " | ".join(_fmt(cell) for cell in row) + " |")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    # JSON has no NaN; null says "not measured" to every reader.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Results as strict JSON (NaN becomes null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")


LOAD_HEADERS = (
    "setup",
    "concurrency",
    "ok",
    "429",
    "errors",
    "img/s",
    "p50 s",
    "p95 s",
    "p99 s",
    "x limit",
)


def load_rows(levels: Sequence[dict[str, Any]], limit_throughput: float) -> list[list[Any]]:
    """One table row per load level, with throughput as a fraction of the bare limit."""
    rows: list[list[Any]] = []
    for level in levels:
        share = level["throughput"] / limit_throughput if limit_throughput else math.nan
        rows.append(
            [
                level["label"],
                level["concurrency"],
                level["ok"],
                level["rejected"],
                level["errors"],
                level["throughput"],
                level["p50"],
                level["p95"],
                level["p99"],
                share,
            ]
        )
    return rows


def stage_rows(levels: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the mean Server-Timing stage breakdown per level (ms)."""
    names: list[str] = []
    for level in levels:
        for name in level.get("stages", {}):
            if name not in names:
                names.append(name)
    headers = ["setup", "concurrency", *[f"{n} ms" for n in names]]
    rows: list[list[Any]] = []
    for level in levels:
        stages = level.get("stages", {})
        rows.append(
            [
                level["label"],
                level["concurrency"],
                *[stages[n] * 1000 if n in stages else None for n in names],
            ]
        )
    return headers, rows


def render_markdown(results: dict[str, Any]) -> str:
    """The run as Markdown: machine, limit, headline ratios, load levels, stages, extras."""
    out: list[str] = [f"# bgsvc benchmark ({results.get('mode', 'full')} run)", ""]
    env = results.get("environment", {})
    if env:
        out.append(
            markdown_table(["key", "value"], [[k, v] for k, v in env.items()]),
        )
        out.append("")
    limit = results.get("limit")
    limit_tp = 0.0
    if limit:
        limit_tp = float(limit["throughput"])
        candidates = limit.get("candidates") or {}
        if candidates:
            out += [
                "## Limits: bare forwards of every engine and precision (pruned graph)",
                "",
                markdown_table(
                    ["engine", "single p50 s", "single img/s", "saturated img/s", "best"],
                    [
                        [
                            name,
                            c["single"]["p50"],
                            c["single"]["throughput"],
                            c["saturated"]["throughput"],
                            "the limit" if name == limit.get("best") else "",
                        ]
                        for name, c in candidates.items()
                    ],
                ),
                "",
            ]
        out += [
            f"## Limit: {limit.get('best', 'bare ONNX Runtime session')}",
            "",
            markdown_table(
                ["stream", "latency p50 s", "img/s"],
                [
                    ["single", limit["single"]["p50"], limit["single"]["throughput"]],
                    [
                        f"saturated ({limit['saturated']['streams']} streams)",
                        limit["saturated"]["p50"],
                        limit["saturated"]["throughput"],
                    ],
                ],
            ),
            "",
        ]
    measurements = (limit or {}).get("measurements")
    if measurements:
        out += [
            "Measured before and after the service runs; the better is used:",
            "",
            markdown_table(
                ["measurement", "single p50 s", "img/s"],
                [[i + 1, m["single_p50"], m["throughput"]] for i, m in enumerate(measurements)],
            ),
            "",
        ]
    if limit and limit.get("processes_2x1_throughput"):
        out += [
            f"Bare limit with one 1-thread process per core: "
            f"{limit['processes_2x1_throughput']:.3f} img/s.",
            "",
        ]
    engines = results.get("engine")
    if engines:
        out += [
            "The service ran: "
            + "; ".join(
                f"{name} on {e['engine']} {e['precision']} ({e['reason']})"
                for name, e in engines.items()
            ),
            "",
        ]
    rembg = results.get("rembg_server")
    if rembg:
        if rembg.get("skipped"):
            out += [f"rembg's server: {rembg['note']}", ""]
        else:
            out += [
                f"## rembg's server (rembg {rembg['rembg']}, {rembg['model']})",
                "",
                markdown_table(LOAD_HEADERS, load_rows(rembg["levels"], limit_tp)),
                "",
            ]
    engine_memory = results.get("engine_memory")
    if engine_memory:
        out += [
            "## RSS of one process per engine (real model, mixed sizes, cache off)",
            "",
            markdown_table(
                ["engine", "MiB ready", "MiB after", "requests", "failed"],
                [
                    [
                        r["engine"],
                        r["rss_ready_mib"],
                        r["rss_after_mib"],
                        r["requests"],
                        r["failed"],
                    ]
                    for r in engine_memory["rows"]
                ],
            ),
            "",
        ]
    headline = results.get("headline")
    if headline:
        out += [
            "## Headline ratios",
            "",
            markdown_table(["ratio", "value", "target"], headline),
            "",
        ]
    levels = results.get("load", [])
    if levels:
        out += [
            "## Service under load",
            "",
            markdown_table(LOAD_HEADERS, load_rows(levels, limit_tp)),
            "",
            "## Stage breakdown (mean of Server-Timing, ms)",
            "",
            markdown_table(*stage_rows(levels)),
            "",
        ]
    for key, title in (
        ("by_size", "Latency by image size (c=1)"),
        ("outside_model", "CPU ms per image outside the model (c=1, 2 MP JPEG)"),
        ("cache", "Result cache (same upload three times)"),
        ("overload", "Overload"),
        ("jobs", "Jobs against the sync path (one node)"),
        ("memory", "Memory"),
        ("memory_arena2", "Memory with MALLOC_ARENA_MAX=2"),
        ("soak", "Memory per worker over a long run"),
        ("cluster", "Cluster"),
        ("chaos", "Chaos: kill -9 of a random node under load"),
        ("gpu", "CUDA: service against the bare session"),
    ):
        section = results.get(key)
        if not section:
            continue
        out += [f"## {title}", ""]
        if isinstance(section, dict) and "table" in section:
            out.append(markdown_table(section["table"]["headers"], section["table"]["rows"]))
            out.append("")
        note = section.get("note") if isinstance(section, dict) else None
        if note:
            out += [str(note), ""]
        if key == "memory" and results.get("real_model_rss_mib"):
            out += [
                "Real model, 1 process x all threads, RSS during the load levels:",
                "",
                markdown_table(["point", "RSS MiB"], results["real_model_rss_mib"]),
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


def plot(path: Path, levels: Sequence[dict[str, Any]], limit_throughput: float) -> bool:
    """Latency percentiles and throughput against concurrency, one line per setup.
    Returns False (and draws nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    setups: dict[str, list[dict[str, Any]]] = {}
    for level in levels:
        setups.setdefault(level["label"], []).append(level)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rows in setups.items():
        rows = sorted(rows, key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        for key, style in (("p50", "-o"), ("p95", "--s"), ("p99", ":^")):
            ax_lat.plot(xs, [r[key] for r in rows], style, label=f"{label} {key}")
        ax_tp.plot(xs, [r["throughput"] for r in rows], "-o", label=label)
    if limit_throughput:
        ax_tp.axhline(limit_throughput, color="grey", linestyle="--", label="bare-session limit")
    ax_lat.set(xlabel="concurrency", ylabel="latency (s)", title="Latency percentiles")
    ax_tp.set(xlabel="concurrency", ylabel="images/s", title="Throughput")
    ticks = sorted({lv["concurrency"] for lv in levels})
    for ax in (ax_lat, ax_tp):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax_tp.set_ylim(bottom=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
