"""The job-queue benchmark's pure parts: mark parsing, rates, kill and cancel verdicts and
the Markdown report. No Redis and no queue library is needed."""

from __future__ import annotations

import math

import pytest
from benchmarks.queues import (
    Mark,
    cancel_verdict,
    drain_rate,
    latency_summary,
    merge,
    parse_marks,
    render_markdown,
    summarise_kill,
)


def test_marks_are_parsed_from_bytes_and_text() -> None:
    marks = parse_marks([b"start d1 100.5", "end d1 101.25"])
    assert marks == [Mark("start", "d1", 100.5), Mark("end", "d1", 101.25)]


def test_drain_rate_counts_intervals_between_first_and_last_start() -> None:
    rate, per_job = drain_rate([10.0, 10.5, 11.0, 12.0])
    assert rate == pytest.approx(1.5)
    assert per_job == pytest.approx(1000.0 / 1.5)
    assert all(math.isnan(x) for x in drain_rate([1.0]))


def test_latency_summary_reports_milliseconds() -> None:
    summary = latency_summary([0.001 * i for i in range(1, 101)])
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p95_ms"] == pytest.approx(95.05)
    assert summary["max_ms"] == pytest.approx(100.0)


def test_a_job_started_again_after_the_kill_and_finished_once_is_redelivered_once() -> None:
    marks = [Mark("start", "victim", 1.0), Mark("start", "victim", 13.5)]
    marks += [Mark("end", "victim", 18.5), Mark("start", "tick0", 3.0)]
    outcome = summarise_kill(marks, "victim", killed_at=2.0)
    assert outcome.redelivered_after_s == pytest.approx(11.5)
    assert (outcome.starts, outcome.ends) == (2, 1)
    assert outcome.verdict == "run again once, finished once"


def test_a_job_never_started_again_is_lost_and_duplicates_are_named() -> None:
    lost = summarise_kill([Mark("start", "victim", 1.0)], "victim", killed_at=2.0)
    assert lost.redelivered_after_s is None
    assert lost.verdict == "lost (not run again)"
    twice = summarise_kill(
        [Mark("start", "victim", t) for t in (1.0, 5.0, 6.0)] + [Mark("end", "victim", 11.0)],
        "victim",
        killed_at=2.0,
    )
    assert twice.verdict == "started 3x, finished 1x"


def test_cancel_verdict_needs_the_other_jobs_to_have_run() -> None:
    assert cancel_verdict(True, ["c0", "c2"]) == "yes"
    assert cancel_verdict(True, ["c0", "c1", "c2"]) == "no: ran anyway"
    assert cancel_verdict(False, ["c0", "c1", "c2"]) == "no API"
    assert cancel_verdict(True, []).startswith("inconclusive")


def _measured(library: str) -> dict[str, object]:
    drain = {"jobs_per_s": 500.0, "ms_per_job": 2.0, "enqueue_per_s": 900.0}
    return {
        "library": library,
        "version": f"{library} 1.0",
        "settings": "defaults",
        "drain": {"1": drain, "4": {**drain, "jobs_per_s": 1200.0, "ms_per_job": 0.83}},
        "enqueue_per_s": 900.0,
        "latency": {"p50_ms": 1.25, "p95_ms": 3.5, "max_ms": 9.0},
        "cancel": {
            "depth_before": 3,
            "depth_after": 2,
            "oldest_age_s": None,
            "verdict": "yes",
        },
    }


def test_report_has_one_row_per_library_in_both_tables_and_shows_failures() -> None:
    kill = {"kill": {"verdict": "lost (not run again)", "redelivered_after_s": None}}
    tuned_kill = {"kill": {"verdict": "run again once, finished once", "redelivered_after_s": 9.5}}
    row = merge(
        _measured("lib-a"),
        {"latency": {"p50_ms": 0.9, "p95_ms": 1.1}},
        {**kill, "settings": "defaults"},
        {**tuned_kill, "settings": "tuned"},
    )
    failed = merge(_measured("lib-b"), {"library": "lib-b", "error": ["boom"]}, {}, {})
    text = render_markdown([row, failed])
    assert "| lib-a 1.0 | 900 | 500 (2.00) | 1,200 (0.83) | 1.2 / 3.5 | 0.9 / 1.1 |" in text
    assert "| lib-a | lost (not run again) | n/a | run again once, finished once | 9.5 |" in text
    assert "depth 3 -> 2; oldest age not readable" in text
    assert "lib-b 1.0 | failed: ['boom']" in text
