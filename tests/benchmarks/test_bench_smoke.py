"""The harness's pure parts (maths, parsing, writers), so `make bench` cannot rot unseen.
No test here measures time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from benchmarks.images import size_for
from benchmarks.stats import (
    Sample,
    mean_stages,
    parse_server_timing,
    percentile,
    ratio,
    slope,
    summarise,
)

from benchmarks import report


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
