"""Fixtures for the browser tests: a real service in a subprocess and Debian's chromium.

The service runs ``python -m bgsvc serve`` on a free loopback port with the tiny generated
model (``tiny_model_path`` from tests/conftest.py). Set ``BGSVC_TEST_BASE_URL`` to drive an
already running service instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
READY_TIMEOUT_S = 120.0


def _missing(reason: str) -> None:
    # On CI a missing browser is a broken setup, not a reason to skip.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return 0


@dataclass
class Service:
    base_url: str
    proc: subprocess.Popen[bytes] | None
    log: Path | None

    def url(self, path: str) -> str:
        return self.base_url + path


def start_service(tmp: Path, model: Path, extra_env: dict[str, str] | None = None) -> Service:
    """Start ``python -m bgsvc serve`` on a free port and wait until /ready answers 200."""
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "BGSVC_HOST": "127.0.0.1",
            "BGSVC_PORT": str(port),
            "BGSVC_MODEL_DIR": str(tmp / "models"),
            "BGSVC_CUSTOM_MODELS": json.dumps(
                {"tiny": {"path": str(model), "profile": "imgly", "input_size": 32}}
            ),
            "BGSVC_DEFAULT_MODEL": "tiny",
            "BGSVC_LOG_LEVEL": "warning",
            "BGSVC_INTRA_OP_THREADS": "1",
            # Several tests upload the same photo and check the real stage timings.
            "BGSVC_RESULT_CACHE_BYTES": "0",
            # Smaller than the test photos: the page must show and download results at
            # the upload's size, beyond the working copy the model sees.
            "BGSVC_MAX_EDGE": "128",
            "BGSVC_DRAIN_SECONDS": "0",
        }
    )
    env.update(extra_env or {})
    log = tmp / f"service-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgsvc", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    service = Service(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _status(service.url("/ready")) != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_service(service)
            pytest.fail(f"service did not become ready:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)
    return service


def stop_service(service: Service) -> None:
    if service.proc is None or service.proc.poll() is not None:
        return
    service.proc.terminate()
    try:
        service.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait(timeout=10)


# Module scope: Playwright's sync API keeps an event loop running in the main thread
# while it is open, which would break asyncio.run() in every test collected after these.
@pytest.fixture(scope="module")
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    external = os.environ.get("BGSVC_TEST_BASE_URL")
    if external:
        yield Service(external.rstrip("/"), None, None)
        return
    model: Path = request.getfixturevalue("tiny_model_path")
    svc = start_service(tmp_path_factory.mktemp("browser-service"), model)
    yield svc
    stop_service(svc)


@pytest.fixture
def launch_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Start extra services (e.g. with other settings); each is stopped after the test."""
    started: list[Service] = []

    def launch(model: Path, extra_env: dict[str, str] | None = None) -> Service:
        svc = start_service(tmp_path, model, extra_env)
        started.append(svc)
        return svc

    yield launch
    for svc in started:
        stop_service(svc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, service: Service) -> Iterator[Any]:
    """A fresh page at the service's ``/``; fails the test on any uncaught page error."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(service.url("/"))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
