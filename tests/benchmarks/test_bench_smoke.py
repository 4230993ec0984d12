"""The harness's pure parts (maths, parsing, writers), so `make bench` cannot rot unseen.
No test here measures time."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from benchmarks.chaos import Outcome, summarise_chaos
from benchmarks.images import size_for
from benchmarks.plan import QUICK, plan_from
from benchmarks.soak import per_worker, worker_pids
from benchmarks.stats import (
    Sample,
    mean_stages,
    parse_server_timing,
    percentile,
    ratio,
    slope,
    summarise,
)

from benchmarks import bench, report


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)


def test_percentile_of_nothing_is_nan_and_bad_q_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_server_timing_is_parsed_into_seconds() -> None:
    header = "decode;dur=12.5, inference;dur=1034.0, queue;dur=0.0,encode;desc=x;dur=3"
    assert parse_server_timing(header) == {
        "decode": pytest.approx(0.0125),
        "inference": pytest.approx(1.034),
        "queue": 0.0,
        "encode": pytest.approx(0.003),
    }


def test_server_timing_skips_entries_without_duration() -> None:
    assert parse_server_timing('miss, cache;desc="hit"') == {}
    assert parse_server_timing(None) == {}


def test_summary_separates_429s_from_errors_and_counts_throughput_over_the_span() -> None:
    samples = [
        Sample(0.0, 1.0, 200, {"inference": 0.8}),
        Sample(1.0, 1.0, 200, {"inference": 0.6}),
        Sample(1.5, 0.01, 429),
        Sample(1.6, 0.5, 500),
    ]
    s = summarise("x", 2, samples)
    assert (s.ok, s.rejected, s.errors) == (2, 1, 1)
    assert s.throughput == pytest.approx(2 / 2.1)  # first start 0.0, last finish 2.1
    assert s.p50 == pytest.approx(1.0)
    assert s.stages == {"inference": pytest.approx(0.7)}


def test_mean_stages_averages_only_where_reported() -> None:
    assert mean_stages([{"a": 1.0}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": 2.0}


def test_slope_finds_a_linear_trend_and_is_zero_when_flat() -> None:
    assert slope([0, 1, 2, 3], [10, 12, 14, 16]) == pytest.approx(2.0)
    assert slope([0, 1, 2], [5, 5, 5]) == 0.0
    assert slope([1], [1]) == 0.0


def test_ratio_is_nan_without_a_denominator() -> None:
    assert ratio(1.0, 2.0) == 0.5
    assert math.isnan(ratio(1.0, 0.0))


def test_markdown_table_formats_floats_and_missing_values() -> None:
    table = report.markdown_table(["a", "b"], [[1.23456, None], ["x", math.nan]])
    assert table.splitlines() == ["| a | b |", "| --- | --- |", "| 1.235 | - |", "| x | - |"]
    with pytest.raises(ValueError):
        report.markdown_table(["a"], [[1, 2]])


def _results() -> dict[str, object]:
    level = summarise("1 process x 2 threads", 1, [Sample(0.0, 1.1, 200, {"inference": 1.0})])
    return {
        "mode": "quick",
        "environment": {"cores": 2},
        "limit": {
            "throughput": 1.0,
            "single": {"p50": 1.0, "throughput": 1.0},
            "saturated": {"streams": 2, "p50": 2.0, "throughput": 0.9},
        },
        "headline": [["service / limit", 0.9, ">= 0.95"]],
        "load": [level.as_dict()],
        "cluster": {"skipped": True, "note": "Cluster part skipped: none."},
    }


def test_json_writer_emits_strict_json_with_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    report.write_json(path, {"x": math.nan, "y": [1.0, math.nan], "z": {"w": 2}})
    assert json.loads(path.read_text()) == {"x": None, "y": [1.0, None], "z": {"w": 2}}


def test_markdown_report_has_the_limit_ratios_levels_stages_and_notes() -> None:
    text = report.render_markdown(_results())
    assert "## Limit: bare ONNX Runtime session" in text
    assert "| service / limit | 0.900 | >= 0.95 |" in text
    assert "| 1 process x 2 threads | 1 | 1 | 0 | 0 |" in text
    assert "inference ms" in text
    assert "Cluster part skipped: none." in text


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = _results()
    assert report.plot(tmp_path / "p.png", results["load"], 1.0)  # type: ignore[arg-type]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_sizes_keep_the_aspect_and_the_megapixels() -> None:
    w, h = size_for(1.5, 2.0)
    assert abs(w * h - 2_000_000) < 3000
    assert w / h == pytest.approx(1.5, rel=0.01)


def test_flags_set_the_chaos_and_soak_lengths_over_the_plan() -> None:
    full = plan_from(bench.arg_parser().parse_args([]))
    assert (full.chaos_seconds, full.chaos_interval, full.soak_requests) == (300.0, 30.0, 20_000)
    quick = plan_from(bench.arg_parser().parse_args(["--quick"]))
    assert quick.chaos_seconds == 0.0  # skipped unless asked for
    args = bench.arg_parser().parse_args(
        ["--quick", "--chaos-seconds", "60", "--chaos-interval", "15", "--soak-requests", "500"]
    )
    plan = plan_from(args)
    assert (plan.chaos_seconds, plan.chaos_interval, plan.soak_requests) == (60.0, 15.0, 500)
    assert plan.requests == QUICK.requests


def test_only_takes_known_sections_and_refuses_others() -> None:
    args = bench.arg_parser().parse_args(["--only", "chaos, soak,chaos"])
    assert args.only == ("chaos", "soak")
    with pytest.raises(SystemExit):
        bench.arg_parser().parse_args(["--only", "chaos,limit"])
    with pytest.raises(SystemExit):
        bench.arg_parser().parse_args(["--only", ","])


def test_chaos_summary_counts_every_failure_with_its_time_and_the_recoveries() -> None:
    outcomes = [
        Outcome(0.5, 1.0, 200, "node-1", ""),
        Outcome(1.0, 3.0, 200, "node-2", ""),
        Outcome(2.0, 180.0, 0, "", "TimeoutError: timed out"),
        Outcome(3.0, 2.0, 502, "", "HTTP 502 Bad Gateway"),
    ]
    kills = [
        {"at_s": 1.0, "node": "node-1", "kill_to_ready_s": 20.0},
        {"at_s": 2.5, "node": "node-2", "kill_to_ready_s": None},
    ]
    summary = summarise_chaos(outcomes, kills, seconds=4.0)
    assert (summary["requests"], summary["ok"], summary["failures"]) == (4, 2, 2)
    assert summary["statuses"] == {"0": 1, "200": 2, "502": 1}
    assert summary["failed_requests"] == [
        {"at_s": 2.0, "status": 0, "error": "TimeoutError: timed out"},
        {"at_s": 3.0, "status": 502, "error": "HTTP 502 Bad Gateway"},
    ]
    assert summary["served_by"] == {"?": 2, "node-1": 1, "node-2": 1}
    assert summary["samples"][2] == [2.0, 180.0, 0, ""]
    assert summary["recovery_max_s"] == 20.0
    assert summary["p50_s"] == pytest.approx(2.5)


def test_worker_memory_reports_fifth_medians_and_slope_per_worker() -> None:
    flat = [(n, 300 * 1024) for n in range(0, 20_001, 1000)]
    growing = [(n, 300 * 1024 + n) for n in range(0, 20_001, 1000)]  # 1 KiB per request
    rows = {r["pid"]: r for r in per_worker({1: flat, 2: growing}, 20_000)}
    assert rows[1]["median_first_fifth_mib"] == rows[1]["median_last_fifth_mib"] == 300.0
    assert rows[1]["slope_kib_per_1000_requests"] == 0.0
    assert rows[2]["slope_kib_per_1000_requests"] == pytest.approx(1000.0)
    assert rows[2]["median_last_fifth_mib"] > rows[2]["median_first_fifth_mib"]


def test_a_single_rss_step_shows_in_the_slope_but_not_in_the_second_half() -> None:
    step = [(n, (300 if n < 8000 else 360) * 1024) for n in range(0, 20_001, 1000)]
    (row,) = per_worker({1: step}, 20_000)
    assert row["slope_kib_per_1000_requests"] > 0
    assert row["slope_second_half_kib_per_1000_requests"] == 0.0


def test_worker_pids_are_the_children_of_the_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in worker_pids(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert worker_pids(2**22 + 1) == []  # no such process


def test_markdown_report_has_the_chaos_and_soak_sections() -> None:
    results = _results()
    results["chaos"] = {
        "table": {"headers": ["kill", "at s"], "rows": [[1, 30.0]]},
        "note": "0 failed",
    }
    results["soak"] = {"table": {"headers": ["worker"], "rows": [["pid 7"]]}, "note": "flat"}
    text = report.render_markdown(results)
    assert "## Chaos: kill -9 of a random node under load" in text
    assert "## Memory per worker over a long run" in text
    assert "| 1 | 30.000 |" in text


def test_cuda_bench_runs_only_where_a_session_really_ran_on_cuda() -> None:
    from benchmarks.gpu import CUDA, choose_bench

    cuda_build = ["TensorrtExecutionProvider", CUDA, "CPUExecutionProvider"]
    assert choose_bench(cuda_build, CUDA) == "gpu"
    # The GPU wheel without a usable CUDA/cuDNN: ORT fell back to the CPU by itself.
    assert choose_bench(cuda_build, "CPUExecutionProvider") == "cpu"
    assert choose_bench(cuda_build, None) == "cpu"
    assert choose_bench(["CPUExecutionProvider"], None) == "cpu"


def test_cpu_host_runs_the_cpu_bench_without_loading_a_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime

    from benchmarks import gpu

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(gpu, "_engine", lambda: pytest.fail("no session on a CPU host"))
    assert gpu.choose_bench(*gpu.session_provider()) == "cpu"


def test_cuda_host_runs_the_cuda_bench_on_the_engine_the_service_would_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime

    from benchmarks import gpu
    from bgsvc.inference import factory

    loaded: list[Any] = []

    class OnCuda:
        providers: ClassVar[list[str]] = [gpu.CUDA, "CPUExecutionProvider"]

    def load_engine(spec: Any, path: Any, runtime: Any) -> OnCuda:
        loaded.append(runtime)
        return OnCuda()

    cuda_build = ["TensorrtExecutionProvider", gpu.CUDA, "CPUExecutionProvider"]
    monkeypatch.delenv("BGSVC_PROVIDER", raising=False)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: cuda_build)
    monkeypatch.setattr(factory, "load_engine", load_engine)
    assert gpu.choose_bench(*gpu.session_provider()) == "gpu"
    # The service's provider choice, not a CPU session (which sent a GPU host to the CPU
    # bench), and the model's own forward pass, without the wrapped graph.
    (runtime,) = loaded
    assert runtime.provider == "auto" and runtime.graph_pipeline is False


def test_cuda_plan_sends_every_client_several_requests_at_every_level() -> None:
    from benchmarks.gpu import FULL_GPU, QUICK_GPU

    assert FULL_GPU.limit_threads == (1, 4)
    assert FULL_GPU.workers == (1, 4, 8) and FULL_GPU.concurrency == (1, 32, 64)
    for plan in (FULL_GPU, QUICK_GPU):
        for c in plan.concurrency:
            assert plan.requests(c) >= 3 * c
    assert FULL_GPU.requests(1) == 100 and FULL_GPU.requests(64) == 512


def test_cuda_ratio_table_divides_by_the_bare_limit_and_reports_cpu_outside_the_model() -> None:
    from benchmarks.gpu import outside_model, ratio_table

    samples = [
        Sample(0.0, 0.05, 200, {"decode": 0.01, "inference": 0.01, "queue": 0.002, "encode": 0.02}),
        Sample(0.05, 0.05, 200, {"decode": 0.01, "inference": 0.01, "queue": 0.0, "encode": 0.02}),
    ]
    level = summarise("gunicorn 1 worker(s)", 1, samples)
    assert outside_model(level) == pytest.approx(30.0)
    table = ratio_table([level], 40.0, {"gunicorn 1 worker(s) c=1": outside_model(level)})
    (row,) = table["rows"]
    assert len(row) == len(table["headers"])
    assert row[2] == pytest.approx(20.0)  # 2 requests over 0.1 s
    assert row[3] == pytest.approx(0.5)
    assert row[5] == pytest.approx(30.0)
    assert "service / bare limit" in report.markdown_table(table["headers"], table["rows"])


def test_outside_model_sums_every_stage_but_inference_and_queue() -> None:
    from benchmarks.outside import outside_row

    stages = {"decode": 0.006, "queue": 0.5, "inference": 1.0, "postprocess": 0.004}
    samples = [
        Sample(0.0, 1.5, 200, {**stages, "encode": 0.010}),
        Sample(2.0, 1.5, 200, {**stages, "encode": 0.020}),
        Sample(4.0, 0.1, 500, {"decode": 9.0}),
    ]
    row = outside_row("png", samples)
    assert row is not None
    fmt, count, median, least, imaging, decode, _pre, _mask, post, encode = row
    assert (fmt, count) == ("png", 2)
    assert median == pytest.approx(25.0) and least == pytest.approx(20.0)
    assert imaging == pytest.approx(25.0)
    assert (decode, post, encode) == pytest.approx((6.0, 4.0, 15.0))
    assert outside_row("webp", [Sample(0.0, 0.1, 429)]) is None


def test_markdown_report_has_the_outside_the_model_section() -> None:
    table = {"headers": ["format", "outside median ms"], "rows": [["png", 21.5]]}
    text = report.render_markdown({"outside_model": {"table": table, "note": "c=1"}})
    assert "## CPU ms per image outside the model" in text
    assert "| png | 21.500 |" in text
