from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc.app import create_app
from bgsvc.config import Settings
from bgsvc.inference.watchdog import STUCK_EXIT_STATUS, Watchdog
from tests.conftest import encode_image, wait_ready
from tests.models import STALL_GREY, TINY_SIZE, build_hang_model


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trips_once_on_the_inference_past_the_limit_and_names_it() -> None:
    clock = FakeClock()
    exits: list[int] = []
    watchdog = Watchdog(limit_s=10, grace_s=60, exit_process=exits.append, clock=clock)
    with watchdog.watching("req-a", "tiny"):
        clock.now += 5
        with watchdog.watching("req-b", "tiny"):
            assert watchdog.check() is None
            clock.now += 5
            tripped = watchdog.check()
            assert tripped is not None and tripped.request_id == "req-a"
            clock.now += 100
            assert watchdog.check() is None  # once per process
    watchdog.finish()
    watchdog.finish()
    assert exits == [STUCK_EXIT_STATUS]


def test_finished_inferences_never_trip_and_finish_does_not_exit() -> None:
    clock = FakeClock()
    exits: list[int] = []
    watchdog = Watchdog(limit_s=10, grace_s=60, exit_process=exits.append, clock=clock)
    for _ in range(3):
        with watchdog.watching("req", "tiny"):
            clock.now += 9
    clock.now += 1000
    assert watchdog.check() is None
    watchdog.finish()
    assert exits == []


def test_default_limit_is_three_request_budgets(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(request_timeout_s=7).effective_watchdog_s == 21
    assert make_settings(request_timeout_s=7, watchdog_s=2).effective_watchdog_s == 2


@pytest.fixture(scope="session")
def hang_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hang_model(tmp_path_factory.mktemp("hang") / "hang.onnx")


def grey_png(grey: int) -> bytes:
    return encode_image(Image.new("RGB", (48, 48), (grey, grey, grey)))


class Node:
    """An in-process app on the hang model whose stop and exit actions are recorded."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.stops: list[int] = []
        self.exits: list[int] = []

    def post(self, body: bytes, request_id: str) -> httpx.Response:
        return self.client.post(
            "/remove-background",
            files={"file": ("img.png", body, "image/png")},
            headers={"X-Request-ID": request_id},
        )

    def metric(self, name: str) -> float:
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


@contextmanager
def hang_node(
    make_settings: Callable[..., Settings], hang_model_path: Path, **overrides: Any
) -> Iterator[Node]:
    settings = make_settings(
        default_model="hang",
        custom_models={
            "hang": {"path": hang_model_path, "profile": "imgly", "input_size": TINY_SIZE}
        },
        result_cache_bytes=0,
        **overrides,
    )
    stops: list[int] = []
    exits: list[int] = []
    app = create_app(
        settings,
        on_load_failure=lambda: None,
        on_stuck=lambda: stops.append(1),
        exit_process=exits.append,
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        node = Node(client)
        node.stops, node.exits = stops, exits
        yield node


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_hanging_inference_marks_the_process_stuck_and_replaces_it(
    make_settings: Callable[..., Settings],
    hang_model_path: Path,
    caplog: pytest.LogCaptureFixture,
    photo_png: bytes,
) -> None:
    caplog.set_level(logging.ERROR, logger="bgsvc.inference.watchdog")
    answers: dict[str, int] = {}
    with hang_node(make_settings, hang_model_path, watchdog_s=0.3, request_timeout_s=1.5) as node:

        def send(request_id: str, body: bytes) -> None:
            answers[request_id] = node.post(body, request_id).status_code

        stuck = threading.Thread(target=send, args=("stuck-1", grey_png(STALL_GREY)))
        stuck.start()
        wait_for(lambda: node.metric("bgsvc_inflight_inferences") == 1, "the stall to start")
        queued = threading.Thread(target=send, args=("queued-1", photo_png))
        queued.start()
        wait_for(lambda: node.stops == [1], "the watchdog to stop the process")

        ready = node.client.get("/ready")
        assert (ready.status_code, ready.json()) == (503, {"status": "stuck inference"})
        fresh = node.post(photo_png, "fresh-1")
        assert fresh.status_code == 503
        assert fresh.json()["code"] == "not_ready"
        assert int(fresh.headers["Retry-After"]) >= 1
        assert fresh.headers["Connection"] == "close"  # reconnect, to another worker
        assert node.metric("bgsvc_watchdog_trips_total") == 1
        assert node.metric("bgsvc_ready") == 0
        stuck.join()
        queued.join()
        # Waiting behind the stuck slot: refused at the trip (retryable elsewhere), not
        # left to time out; the stuck request itself ran out of its budget.
        assert answers == {"queued-1": 503, "stuck-1": 504}
        assert node.exits == []  # not before the graceful part is over
    assert node.exits == [STUCK_EXIT_STATUS]
    assert node.stops == [1]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1
    assert "stuck-1" in lines[0] and "model hang" in lines[0] and "stuck inference" in lines[0]


def test_a_slow_inference_within_the_limit_never_trips(
    make_settings: Callable[..., Settings], hang_model_path: Path
) -> None:
    with hang_node(make_settings, hang_model_path, watchdog_s=2.5, request_timeout_s=5) as node:
        # 0.1-0.7 s each here: the watchdog looks every 0.25 s while they run.
        for grey in (215, 217, 218):
            assert node.post(grey_png(grey), f"slow-{grey}").status_code == 200
        assert node.client.get("/ready").status_code == 200
        assert node.metric("bgsvc_watchdog_trips_total") == 0
        assert node.stops == []
    assert node.exits == []
