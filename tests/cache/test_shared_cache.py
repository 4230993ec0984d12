"""The shared cache through HTTP: two app instances on one Redis stand for two nodes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bgsvc.config import Settings
from bgsvc.inference.loader import load_engines
from bgsvc.pipeline import Predictor
from tests.conftest import encode_image, subject_image
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

# Headers that describe this response rather than the result.
PER_RESPONSE = {"x-request-id", "server-timing", "x-cache", "date", "x-served-by", "content-length"}


class SlowEngine:
    """The tiny model, slowed so that concurrent requests overlap; counts forward passes."""

    def __init__(self, inner: Predictor, counter: list[int], lock: threading.Lock) -> None:
        self.inner = inner
        self.version = getattr(inner, "version", inner.name)
        self.counter = counter
        self.lock = lock

    @property
    def name(self) -> str:
        return self.inner.name

    def predict(self, rgb: Image.Image) -> np.ndarray:
        with self.lock:
            self.counter[0] += 1
        time.sleep(0.4)
        return self.inner.predict(rgb)


def slow_loader(counter: list[int]) -> Callable[[Settings], Mapping[str, Predictor]]:
    lock = threading.Lock()

    def load(settings: Settings) -> Mapping[str, Predictor]:
        return {k: SlowEngine(v, counter, lock) for k, v in load_engines(settings).items()}

    return load


def post(client: TestClient, image: bytes) -> httpx.Response:
    return client.post("/remove-background", files={"file": ("a.png", image)})


def metric(client: TestClient, line: str) -> float:
    for row in client.get("/metrics").text.splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return 0.0


def result_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in PER_RESPONSE}


def test_second_node_is_served_from_redis_with_the_first_nodes_bytes_and_headers(
    make_client: Callable[..., TestClient], redis_server: RedisServer, photo_png: bytes
) -> None:
    first = make_client(redis_url=redis_server.url)
    second = make_client(redis_url=redis_server.url)

    fresh = post(first, photo_png)
    shared = post(second, photo_png)
    local = post(second, photo_png)

    assert fresh.status_code == shared.status_code == local.status_code == 200
    assert fresh.headers["X-Cache"] == "MISS"
    assert shared.headers["X-Cache"] == local.headers["X-Cache"] == "HIT"
    assert shared.content == local.content == fresh.content
    assert result_headers(shared) == result_headers(local) == result_headers(fresh)
    hit = 'bgsvc_result_cache_level_lookups_total{level="%s",result="hit"}'
    assert metric(second, hit % "redis") == 1.0
    assert metric(second, hit % "local") == 1.0


@pytest.mark.parametrize(
    "setting",
    [{"jpeg_quality": 60}, {"decontaminate": False}, {"max_output_pixels": 1_000_000}],
    ids=lambda s: next(iter(s)),
)
def test_a_node_with_other_output_settings_computes_its_own_result(
    make_client: Callable[..., TestClient],
    redis_server: RedisServer,
    photo_png: bytes,
    setting: dict[str, object],
) -> None:
    # A fleet part-way through a change of settings, or nodes configured apart on one
    # Redis: a result made under other settings is not theirs to serve.
    first = make_client(redis_url=redis_server.url)
    second = make_client(redis_url=redis_server.url, **setting)
    same = make_client(redis_url=redis_server.url)
    assert post(first, photo_png).headers["X-Cache"] == "MISS"
    assert post(second, photo_png).headers["X-Cache"] == "MISS"
    assert post(same, photo_png).headers["X-Cache"] == "HIT"


def test_shared_cache_off_leaves_each_node_to_compute_its_own(
    make_client: Callable[..., TestClient], redis_server: RedisServer, photo_png: bytes
) -> None:
    first = make_client(redis_url=redis_server.url, shared_cache=False)
    second = make_client(redis_url=redis_server.url, shared_cache=False)
    assert post(first, photo_png).headers["X-Cache"] == "MISS"
    assert post(second, photo_png).headers["X-Cache"] == "MISS"
    assert post(second, photo_png).headers["X-Cache"] == "HIT"  # its own local level
    hit = 'bgsvc_result_cache_level_lookups_total{level="redis",result="hit"}'
    assert metric(second, hit) == 0.0


def test_concurrent_identical_requests_in_one_process_run_inference_once(
    make_client: Callable[..., TestClient], redis_server: RedisServer, photo_png: bytes
) -> None:
    calls = [0]
    client = make_client(loader=slow_loader(calls), max_queue=8, redis_url=redis_server.url)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(client, photo_png), range(8)))

    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.content for r in responses}) == 1
    assert calls[0] == 1
    assert sorted(r.headers["X-Cache"] for r in responses) == ["HIT"] * 7 + ["MISS"]


def test_two_nodes_racing_on_one_key_compute_it_once(
    make_client: Callable[..., TestClient], redis_server: RedisServer, photo_png: bytes
) -> None:
    calls = [0]
    nodes = [make_client(loader=slow_loader(calls), redis_url=redis_server.url) for _ in range(2)]

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda node: post(node, photo_png), nodes))

    assert [r.status_code for r in responses] == [200, 200]
    assert responses[0].content == responses[1].content
    assert calls[0] == 1
    waited = 'bgsvc_result_cache_coalesced_total{scope="cluster"}'
    assert sum(metric(node, waited) for node in nodes) == 1.0


def test_requests_succeed_while_redis_is_down_and_the_cache_recovers(
    make_client: Callable[..., TestClient],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No local level: every lookup goes to Redis.
    client = make_client(redis_url=redis_server.url, result_cache_bytes=0)
    images = [encode_image(subject_image((60 + i, 50))) for i in range(4)]
    errors = 'bgsvc_cache_errors_total{level="redis"}'
    assert post(client, images[0]).headers["X-Cache"] == "MISS"
    assert post(client, images[0]).headers["X-Cache"] == "HIT"

    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="bgsvc.cache.redis"):
        down = [post(client, images[0]), post(client, images[1])]
        time.sleep(1.1)  # past the level's retry pause: Redis is tried (and fails) again
        down.append(post(client, images[1]))
    assert [r.status_code for r in down] == [200, 200, 200]
    assert [r.headers["X-Cache"] for r in down] == ["MISS"] * 3
    assert metric(client, errors) >= 2
    # Rate-limited: one line for the outage, not one per failed call.
    warnings = [r for r in caplog.records if "redis cache unavailable" in r.getMessage()]
    assert len(warnings) == 1

    redis_server.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if post(client, images[2]).headers["X-Cache"] == "HIT":
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the Redis level did not come back")


def test_five_hundred_cache_hits_through_redis_all_succeed(
    make_client: Callable[..., TestClient], redis_server: RedisServer, photo_png: bytes
) -> None:
    client = make_client(redis_url=redis_server.url, result_cache_bytes=0)
    expected = post(client, photo_png).content

    statuses: dict[int, int] = {}
    mismatches = 0
    for _ in range(500):
        response = post(client, photo_png)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        mismatches += response.content != expected
    assert statuses == {200: 500}
    assert mismatches == 0
    assert (
        metric(client, 'bgsvc_result_cache_level_lookups_total{level="redis",result="hit"}') == 500
    )
