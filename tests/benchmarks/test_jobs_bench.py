"""The bench's jobs part end to end on the tiny model (a batch of 4), so the wiring of
`make bench`'s jobs row cannot rot unseen. No test here measures time."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import bench, jobs
from tests.models import TINY_SIZE


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 180, 160)).save(buf, "JPEG")
    return buf.getvalue()


def test_unique_copies_differ_in_bytes_but_decode_to_the_same_pixels() -> None:
    photo = _jpeg()
    copies = jobs.unique_jpegs(photo, 3, "t")
    assert len(set(copies)) == 3 and photo not in copies
    with Image.open(io.BytesIO(photo)) as original:
        pixels = original.tobytes()
    for copy in copies:
        with Image.open(io.BytesIO(copy)) as image:
            assert image.tobytes() == pixels
    with pytest.raises(ValueError):
        jobs.unique_jpegs(b"\x89PNG", 1, "t")


def test_jobs_flags_set_the_batch_the_idle_jobs_and_the_modes() -> None:
    full = bench.plan_from(bench.arg_parser().parse_args([]))
    assert (full.jobs_items, full.jobs_idle, full.jobs_variants) == (200, 50, ("embedded", "redis"))
    quick = bench.plan_from(bench.arg_parser().parse_args(["--quick"]))
    assert (quick.jobs_items, quick.jobs_variants) == (20, ("embedded", "redis"))
    only = bench.plan_from(bench.arg_parser().parse_args(["--only", "jobs", "--jobs-batch", "7"]))
    assert (only.jobs_items, only.jobs_variants) == (7, ("embedded",))
    redis = bench.plan_from(bench.arg_parser().parse_args(["--only", "jobs", "--redis"]))
    assert redis.jobs_variants == ("redis",)


def _tiny_node_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_path: Path) -> None:
    # The bench's nodes inherit this process's environment.
    models = {"tiny": {"path": str(tiny_model_path), "profile": "imgly", "input_size": TINY_SIZE}}
    monkeypatch.setenv("BGSVC_CUSTOM_MODELS", json.dumps(models))
    monkeypatch.setenv("BGSVC_DEFAULT_MODEL", "tiny")
    monkeypatch.setenv("BGSVC_MODEL_DIR", str(tmp_path / "models"))


def _run_jobs_part(tmp_path: Path, *flags: str) -> dict[str, object]:
    out = tmp_path / "out"
    argv = ["--quick", "--only", "jobs", "--jobs-batch", "4", "--jobs-idle", "3", "--out", str(out)]
    assert bench.main([*argv, *flags]) == 0
    results: dict[str, object] = json.loads((out / "only-jobs" / "results.json").read_text())
    assert (
        "## Jobs against the sync path (one node)" in (out / "only-jobs" / "results.md").read_text()
    )
    return results


def test_jobs_part_runs_a_batch_and_sync_requests_and_idle_jobs_in_embedded_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_path: Path
) -> None:
    _tiny_node_env(monkeypatch, tmp_path, tiny_model_path)
    results = _run_jobs_part(tmp_path)
    section = results["jobs"]
    assert isinstance(section, dict)
    (variant,) = section["variants"]
    assert variant["mode"] == "embedded"
    tp = variant["throughput"]
    assert (tp["items"], tp["batches"], tp["batch_succeeded"], tp["sync_ok"]) == (4, 2, 4, 4)
    assert "redis_job_keys_while_queued" not in tp
    assert variant["idle_latency"]["jobs"] == 3
    (row,) = section["table"]["rows"]
    assert len(row) == len(section["table"]["headers"]) and row[0] == "embedded"
    assert results["headline"] == [
        ["jobs (embedded): batch / sync throughput", tp["ratio"], ">= 0.9"]
    ]


@pytest.mark.redis
def test_jobs_part_with_redis_gives_the_node_its_own_redis_and_names_the_mode_seen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_path: Path
) -> None:
    _tiny_node_env(monkeypatch, tmp_path, tiny_model_path)
    results = _run_jobs_part(tmp_path, "--redis")
    section = results["jobs"]
    assert isinstance(section, dict)
    (variant,) = section["variants"]
    assert variant["variant"] == "redis"
    tp = variant["throughput"]
    assert (tp["batch_succeeded"], tp["sync_ok"]) == (4, 4)
    # Whichever mode the checkout selects with BGSVC_REDIS_URL, the row says which it was.
    seen = tp["redis_job_keys_while_queued"]
    assert variant["mode"] == ("redis" if seen else jobs.REDIS_FALLBACK_MODE)
