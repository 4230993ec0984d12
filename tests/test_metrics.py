"""The worker start-time gauge behind the restart alert."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import multiprocess, values
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.values import MultiProcessValue

from bgsvc.metrics import Metrics

START = "bgsvc_process_start_time_seconds"


def start_samples(text: str) -> list[float]:
    return [
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == START
        for s in family.samples
    ]


def test_each_app_exports_when_its_process_started(
    make_client: Callable[..., TestClient],
) -> None:
    before = time.time()
    client = make_client()
    after = time.time()
    (started,) = start_samples(client.get("/metrics").text)
    assert before <= started <= after


@pytest.fixture
def as_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[int], None]]:
    """Switch prometheus-client to gunicorn-worker mode, writing as process ``pid``."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    previous = values.ValueClass

    def become(pid: int) -> None:
        values.ValueClass = MultiProcessValue(lambda: pid)

    yield become
    values.ValueClass = previous


def test_multiprocess_start_time_follows_the_newest_worker_after_one_dies(
    as_worker: Callable[[int], None], tmp_path: Path
) -> None:
    as_worker(101)
    Metrics(tmp_path).process_start.set(1000.0)
    as_worker(102)
    Metrics(tmp_path).process_start.set(1010.0)
    # gunicorn replaces worker 101: its files stay, the new worker starts later.
    multiprocess.mark_process_dead(101, str(tmp_path))
    as_worker(103)
    scraper = Metrics(tmp_path)
    scraper.process_start.set(1500.0)
    body, _ = scraper.render()
    # One series per node (no pid label), so Prometheus sees a restart as one change.
    assert start_samples(body.decode()) == [1500.0]


def test_multiprocess_start_time_does_not_fall_back_when_the_newest_worker_dies(
    as_worker: Callable[[int], None], tmp_path: Path
) -> None:
    as_worker(201)
    Metrics(tmp_path).process_start.set(1000.0)
    as_worker(202)
    scraper = Metrics(tmp_path)
    scraper.process_start.set(1200.0)
    multiprocess.mark_process_dead(202, str(tmp_path))
    body, _ = scraper.render()
    # A worker dying is not a start: a falling value would count as one more change.
    assert start_samples(body.decode()) == [1200.0]
