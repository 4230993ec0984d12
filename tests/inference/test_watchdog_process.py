"""The watchdog in a real gunicorn node (deploy/start.sh, two workers, no nginx): the
worker whose inference hangs is replaced while the other keeps serving."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bgsvc.cluster import Node
from bgsvc.inference.watchdog import STUCK_EXIT_STATUS
from tests.conftest import encode_image, subject_image
from tests.models import HANG_GREY, TINY_SIZE, build_hang_model
from tests.procs import children, running_node

REMOVE = "/remove-background"


def metric(url: str, name: str) -> float:
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return -1.0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def wait_for(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def normal_image(index: int) -> bytes:
    img = subject_image((96, 64))
    img.putpixel((index % 96, 0), (index % 251, (index // 251) % 251, 7))
    return encode_image(img)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    hang = build_hang_model(tmp_path / "hang.onnx")
    env = {
        "BGSVC_CUSTOM_MODELS": json.dumps(
            {"hang": {"path": str(hang), "profile": "imgly", "input_size": TINY_SIZE}}
        ),
        "BGSVC_DEFAULT_MODEL": "hang",
        # The hang model's spin is sized on ONNX Runtime; the engine choice would time
        # its microsecond forward passes and could land on either engine.
        "BGSVC_ENGINE": "onnxruntime",
        "BGSVC_MODEL_DIR": str(tmp_path / "model-dir"),
        # A stuck slot is noticed before the requests queued behind it run out of
        # their budget, so they are refused with a retryable 503 instead of a 504.
        "BGSVC_REQUEST_TIMEOUT_S": "4",
        "BGSVC_WATCHDOG_S": "2",
        "BGSVC_DRAIN_SECONDS": "1",
        "BGSVC_RESULT_CACHE_BYTES": "0",
        "BGSVC_LOG_LEVEL": "info",
    }
    with running_node(tmp_path / "run", env, workers=2) as started:
        yield started


def test_a_worker_with_a_hanging_inference_is_replaced_while_the_node_keeps_serving(
    node: Node,
) -> None:
    wait_for(lambda: metric(node.url, "bgsvc_ready") == 2, "both workers ready", 45)
    before = children(node.pid)
    assert len(before) == 2

    hang_status: list[int] = []
    white = encode_image(Image.new("RGB", (64, 64), (HANG_GREY,) * 3))

    def send_hang() -> None:
        with httpx.Client(timeout=30) as client:
            response = client.post(
                f"{node.url}{REMOVE}",
                files={"file": ("white.png", white, "image/png")},
                headers={"X-Request-ID": "watchdog-hang-1"},
            )
            hang_status.append(response.status_code)

    outcomes: list[tuple[int | None, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(1_000_000))

    def send_normal() -> None:
        # One keep-alive connection per client, as nginx's upstream keepalive would.
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                with lock:
                    index = next(counter)
                try:
                    r = client.post(
                        f"{node.url}{REMOVE}",
                        files={"file": ("img.png", normal_image(index), "image/png")},
                    )
                    code = r.json().get("code", "") if r.status_code != 200 else ""
                    outcome: tuple[int | None, str] = (r.status_code, code)
                except httpx.HTTPError as exc:
                    outcome = (None, type(exc).__name__)
                with lock:
                    outcomes.append(outcome)

    hang = threading.Thread(target=send_hang)
    hang.start()
    clients = [threading.Thread(target=send_normal) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        wait_for(lambda: metric(node.url, "bgsvc_watchdog_trips_total") == 1, "the trip", 20)

        def replaced() -> bool:
            now = children(node.pid)
            return len(now) == 2 and len(now & before) == 1

        wait_for(replaced, "gunicorn to replace the stuck worker", 30)
        wait_for(lambda: metric(node.url, "bgsvc_ready") == 2, "the new worker ready", 30)
        wait_for(lambda: len(outcomes) >= 200, "200 normal requests", 30)
    finally:
        stop.set()
        for t in clients:
            t.join(60)
        hang.join(60)

    counts = Counter(outcomes)
    print(f"normal requests during the event: {dict(counts)}; hang: {hang_status}")
    # Served, or refused with the retryable 503 (nginx retries it on another node);
    # never a 504, a 429 or a connection closed under a request (the 503s close theirs).
    assert set(counts) <= {(200, ""), (503, "not_ready")}
    assert counts[(200, "")] >= 150
    assert hang_status == [504]
    assert node.alive()
    log = node.log_path.read_text()
    assert "stuck inference: request watchdog-hang-1 on model hang" in log
    assert f"exited with code {STUCK_EXIT_STATUS}" in log
    for crash in ("terminate called", "SIGABRT", "core dumped", "Aborted"):
        assert crash not in log
