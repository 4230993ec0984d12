"""Apps with jobs on a temporary data directory, and helpers to drive them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from bgsvc.inference.scheduler import Ticket
from bgsvc.jobs.base import JobStore
from bgsvc.jobs.redis.store import RedisJobStore
from bgsvc.jobs.runtime import Jobs
from bgsvc.jobs.sqlite.store import SqliteJobStore
from bgsvc.state import AppState
from tests.jobs.backends import Backend
from tests.outbound.servers import Handler
from tests.redis_server import RedisServer, redis_server  # noqa: F401


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def jobs_mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every jobs test runs twice: SQLite records in the process, and the shared mode
    (records and dramatiq's queue in a real redis-server on loopback)."""
    if request.param == "embedded":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"redis_url": server.url}


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Job stores of either kind, for scenarios played on both."""
    if request.param == "embedded":
        path = tmp_path / "jobs.sqlite3"
        yield Backend("embedded", lambda _timeout: SqliteJobStore(path))
        return
    server: RedisServer = request.getfixturevalue("redis_server")

    def redis_store(timeout: float) -> JobStore:
        return RedisJobStore(server.url, ttl_s=3600, heartbeat_timeout_s=timeout)

    yield Backend("redis", redis_store)


@pytest.fixture
def jobs_client(
    jobs_mode: dict[str, Any], make_client: Callable[..., TestClient], data_dir: Path
) -> Callable[..., TestClient]:
    # jobs_mode first: fixtures end in the reverse order they started, so its Redis stops
    # after the apps. The other way round, an app whose runner was still ending a job found
    # Redis gone, retried the write and held its shutdown for its 30 s grace.
    def factory(**overrides: Any) -> TestClient:
        return make_client(**{"data_dir": data_dir, **jobs_mode, **overrides})

    return factory


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.bgsvc  # type: ignore[attr-defined]
    return state


def jobs_of(client: TestClient) -> Jobs:
    jobs: Jobs = client.app.state.jobs  # type: ignore[attr-defined]
    return jobs


def submit(client: TestClient, image: bytes, **kwargs: Any) -> dict[str, Any]:
    response = client.post("/jobs", files={"file": ("photo.png", image, "image/png")}, **kwargs)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_status(
    client: TestClient, job_id: str, statuses: tuple[str, ...], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if body.get("status") in statuses or time.monotonic() > deadline:
            assert body.get("status") in statuses, body
            return body
        time.sleep(0.02)


@pytest.fixture
def hold_sync() -> Iterator[Callable[[TestClient], list[Ticket]]]:
    """Fill a client's inference slots with sync tickets (as in-flight requests would);
    released at the end of the test unless the test closes them first."""
    held: list[Ticket] = []

    def fill(client: TestClient) -> list[Ticket]:
        scheduler = state_of(client).scheduler
        tickets = [scheduler.try_admit() for _ in range(scheduler.max_concurrency)]
        held.extend(tickets)
        return tickets

    yield fill
    for ticket in held:
        ticket.close()


def verifying_hook(secret: str, events: list[dict[str, Any]]) -> Callable[[Handler], None]:
    """A receiver route that verifies each delivery's signature, keeps the event, and 204s."""

    def hook(handler: Handler) -> None:
        seen = handler.server.state.seen[-1]
        events.append(Webhook(secret).verify(seen.body, seen.headers))
        handler.reply(204)

    return hook


def wait_webhook_attempts(client: TestClient, status_url: str, timeout: float = 10.0) -> None:
    """Until the job or batch at ``status_url`` records a webhook attempt."""
    deadline = time.monotonic() + timeout
    while not client.get(status_url).json()["webhook_attempts"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
