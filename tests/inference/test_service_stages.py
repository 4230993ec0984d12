"""The pipeline runs a real engine's stages apart, reports each in Server-Timing, and gives a
lone request's edge step the cores its forward pass has just used."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

import pytest
from benchmarks.stats import parse_server_timing
from fastapi.testclient import TestClient

from bgsvc.imaging import bands
from bgsvc.pipeline import Remover
from bgsvc.state import AppState


def test_staged_engine_reports_preprocess_inference_and_mask(
    client: TestClient, photo_jpeg: bytes
) -> None:
    response = client.post("/remove-background", files={"file": ("a.jpg", photo_jpeg)})
    assert response.status_code == 200
    stages = parse_server_timing(response.headers["Server-Timing"])
    expected = {"decode", "preprocess", "queue", "inference", "mask", "postprocess", "encode"}
    assert expected <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values())


@pytest.fixture
def given(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The helper counts the service hands bands.spread, call by call."""
    counts: list[int] = []
    real = bands.spread

    @contextmanager
    def spy(pool: Executor | None, helpers: int) -> Iterator[None]:
        counts.append(helpers)
        with real(pool, helpers):
            yield

    monkeypatch.setattr(bands, "spread", spy)
    return counts


@pytest.mark.parametrize(("others", "helpers"), [(0, 2), (1, 0)])
def test_a_lone_requests_edge_step_gets_the_rest_of_the_passes_cores(
    make_client: Callable[..., TestClient],
    photo_jpeg: bytes,
    given: list[int],
    others: int,
    helpers: int,
) -> None:
    """Alone in the process, a request's edge step is spread over the helper threads (the
    forward pass's cores less its own); beside another request it keeps to its thread."""
    client = make_client(intra_op_threads=3)
    state: AppState = client.app.state.bgsvc  # type: ignore[attr-defined]
    held = [state.scheduler.try_admit() for _ in range(others)]
    response = client.post("/remove-background", files={"file": ("a.jpg", photo_jpeg)})
    for ticket in held:
        ticket.close()
    assert response.status_code == 200
    assert given == [helpers]


def test_an_edge_step_left_running_by_a_timed_out_request_keeps_the_helpers_from_the_next(
    make_client: Callable[..., TestClient],
    photo_jpeg: bytes,
    given: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request past its deadline gets its 504 and gives back its ticket, while its edge
    step runs on: the next request, alone by the tickets, still shares the cores with it."""
    client = make_client(intra_op_threads=3, request_timeout_s=0.5)
    state: AppState = client.app.state.bgsvc  # type: ignore[attr-defined]
    remover = state.service.remover
    full_matte = remover.full_matte
    second_in = threading.Event()

    def slow_first(*args: Any) -> Any:
        if len(given) == 1:
            second_in.wait(10)  # the first outlives its deadline until the second is in
        else:
            second_in.set()
        return full_matte(*args)

    monkeypatch.setattr(remover, "full_matte", slow_first)
    first = client.post("/remove-background", files={"file": ("a.jpg", photo_jpeg)})
    second = client.post("/remove-background", files={"file": ("a.jpg", photo_jpeg)})
    assert (first.status_code, second.status_code) == (504, 200)
    assert given == [2, 0]


def test_a_made_up_photo_goes_through_the_stages_on_a_stage_thread_before_ready(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request must not be the one that pays for the process's fresh memory."""
    threads: list[str] = []
    rehearse = Remover.rehearse

    def spy(self: Remover) -> None:
        threads.append(threading.current_thread().name)
        rehearse(self)

    monkeypatch.setattr(Remover, "rehearse", spy)
    client = make_client(warm_stages=True)
    assert client.get("/ready").status_code == 200
    assert len(threads) == 1 and threads[0].startswith("bgsvc-stage")


def test_a_rehearsal_that_fails_does_not_keep_the_node_from_serving(
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
    photo_jpeg: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(self: Remover) -> None:
        raise RuntimeError("no memory for a made-up photo")

    monkeypatch.setattr(Remover, "rehearse", broken)
    client = make_client(warm_stages=True)
    response = client.post("/remove-background", files={"file": ("a.jpg", photo_jpeg)})
    assert response.status_code == 200
    assert "rehearsing the stages failed" in caplog.text


@pytest.mark.parametrize(
    "limits",
    [
        {"allowed_formats": ["PNG"]},
        {"allowed_formats": ["WEBP"], "max_pixels": 100_000},
        {"max_output_pixels": 50_000},
        {"allowed_formats": ["GIF"]},  # nothing it writes: the stages after the decode
    ],
)
def test_the_rehearsal_keeps_to_the_input_guard_the_node_is_configured_with(
    make_client: Callable[..., TestClient],
    caplog: pytest.LogCaptureFixture,
    limits: dict[str, Any],
) -> None:
    """An operator's narrower formats or pixel budgets are no reason for a failed start-up
    step: the made-up photo is made to pass them."""
    caplog.set_level("INFO", logger="bgsvc.app")
    client = make_client(warm_stages=True, **limits)
    assert client.get("/ready").status_code == 200
    assert "rehearsing the stages failed" not in caplog.text
    assert "stages rehearsed on a made-up photo" in caplog.text


def test_a_rehearsal_past_one_requests_budget_does_not_hold_back_ready(
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()

    def stuck(self: Remover) -> None:
        release.wait(30)

    monkeypatch.setattr(Remover, "rehearse", stuck)
    try:
        client = make_client(warm_stages=True, request_timeout_s=0.5)
        assert client.get("/ready").status_code == 200
        assert "rehearsing the stages took over" in caplog.text
    finally:
        release.set()
