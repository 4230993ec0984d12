"""BGSVC_TRUSTED_PROXIES is the one list of proxies whose X-Forwarded-For is believed: by
uvicorn (under `bgsvc serve` and in gunicorn's workers) and by the failed-authentication
budget. Empty by default: the socket peer is the client."""

from __future__ import annotations

import asyncio
import logging
import os
import runpy
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from gunicorn.config import Config as GunicornConfig
from gunicorn.glogging import Logger as GunicornLogger

import bgsvc.inference.loader
import bgsvc.log
from bgsvc import cli, server
from bgsvc.cluster.nodes import ClusterConfig, Node, NodeSpec
from bgsvc.config import Settings, get_settings
from tests.auth.conftest import PEPPER, FakeLimits

REPO = Path(__file__).resolve().parents[1]
CLIENT = "203.0.113.7"


async def _client_seen(config: uvicorn.Config, peer: str, forwarded: str) -> tuple[str, int]:
    """scope["client"] as the app sees it behind uvicorn's own middleware, for a request
    from ``peer`` carrying ``X-Forwarded-For: forwarded``."""
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["client"] = scope["client"]

    config.app = app
    config.load()
    scope = {
        "type": "http",
        "client": (peer, 40000),
        "headers": [(b"x-forwarded-for", forwarded.encode())],
        "scheme": "http",
    }
    await config.loaded_app(scope, None, None)
    return seen["client"]  # type: ignore[no-any-return]


@pytest.fixture
def serve_config(
    monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]
) -> Callable[..., uvicorn.Config]:
    """The uvicorn config `bgsvc serve` runs with, for settings ``overrides``."""

    def build(**overrides: Any) -> uvicorn.Config:
        captured: list[uvicorn.Config] = []
        monkeypatch.setattr(
            server.DrainingServer, "run", lambda self, *a, **k: captured.append(self.config)
        )
        monkeypatch.setattr(bgsvc.log, "configure_logging", lambda *a, **k: None)
        monkeypatch.setattr(bgsvc.inference.loader, "preflight", lambda settings: None)
        args = cli.build_parser().parse_args(["serve"])
        assert cli._serve(args, make_settings(**overrides)) == 0
        (config,) = captured
        return config

    return build


def test_no_proxy_is_trusted_unless_one_is_named() -> None:
    assert Settings().trusted_proxies == ""
    assert Settings().forwarded_allow_ips == []
    # Canonical networks: gunicorn refuses host bits (10.0.0.1/8).
    named = Settings(trusted_proxies="127.0.0.1, 10.0.0.1/8,::1")
    assert named.forwarded_allow_ips == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]


def test_bgsvc_serve_ignores_forwarded_for_by_default(
    serve_config: Callable[..., uvicorn.Config],
) -> None:
    config = serve_config()
    assert asyncio.run(_client_seen(config, "127.0.0.1", CLIENT)) == ("127.0.0.1", 40000)


def test_bgsvc_serve_believes_forwarded_for_from_a_named_proxy(
    serve_config: Callable[..., uvicorn.Config],
) -> None:
    config = serve_config(trusted_proxies="127.0.0.1")
    assert asyncio.run(_client_seen(config, "127.0.0.1", f"1.2.3.4, {CLIENT}"))[0] == CLIENT
    # Another peer is not the proxy: what it claims is ignored.
    config = serve_config(trusted_proxies="127.0.0.1")
    assert asyncio.run(_client_seen(config, "198.51.100.1", CLIENT))[0] == "198.51.100.1"


@pytest.fixture
def shared_loggers() -> Iterator[None]:
    """gunicorn's logger and its uvicorn worker take over these loggers; give them back."""
    saved = {
        name: (log.handlers[:], log.level, log.propagate)
        for name in ("uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access")
        for log in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        log = logging.getLogger(name)
        log.handlers[:], log.level, log.propagate = handlers, level, propagate


def _gunicorn_worker_config(monkeypatch: pytest.MonkeyPatch, trusted: str | None) -> Any:
    """The uvicorn config of a gunicorn worker started with deploy/gunicorn.conf.py."""
    if trusted is None:
        monkeypatch.delenv("BGSVC_TRUSTED_PROXIES", raising=False)
    else:
        monkeypatch.setenv("BGSVC_TRUSTED_PROXIES", trusted)
    # gunicorn's own variable must not matter any more.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    get_settings.cache_clear()
    try:
        conf = runpy.run_path(str(REPO / "deploy" / "gunicorn.conf.py"))
    finally:
        get_settings.cache_clear()
    cfg = GunicornConfig()
    cfg.set("forwarded_allow_ips", conf["forwarded_allow_ips"])
    worker = server.DrainingUvicornWorker(1, os.getpid(), [], None, 30, cfg, GunicornLogger(cfg))
    worker.tmp.close()  # the heartbeat file, unused here
    return worker.config


@pytest.mark.usefixtures("shared_loggers")
def test_gunicorn_workers_ignore_forwarded_for_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _gunicorn_worker_config(monkeypatch, None)
    assert config.forwarded_allow_ips == []
    assert asyncio.run(_client_seen(config, "127.0.0.1", CLIENT))[0] == "127.0.0.1"


@pytest.mark.usefixtures("shared_loggers")
def test_gunicorn_workers_believe_the_proxies_the_setting_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = _gunicorn_worker_config(monkeypatch, "10.0.0.0/8,127.0.0.1")
    assert config.forwarded_allow_ips == ["10.0.0.0/8", "127.0.0.1/32"]
    assert asyncio.run(_client_seen(config, "10.1.2.3", CLIENT))[0] == CLIENT


@pytest.mark.parametrize(("trusted", "counted_on"), [(None, "127.0.0.1"), ("127.0.0.1", CLIENT)])
def test_the_failed_auth_budget_believes_only_a_named_proxy(
    make_client: Callable[..., TestClient],
    tmp_path: Path,
    trusted: str | None,
    counted_on: str,
) -> None:
    overrides = {} if trusted is None else {"trusted_proxies": trusted}
    app = make_client(
        auth="required", auth_pepper=PEPPER, data_dir=tmp_path / "data", **overrides
    ).app
    fake = FakeLimits()
    app.state.limits = fake  # type: ignore[attr-defined]
    local = TestClient(app, client=("127.0.0.1", 5000))
    assert local.get("/jobs/x", headers={"X-Forwarded-For": CLIENT}).status_code == 401
    assert fake.failed_from == [counted_on]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("trusted", "budgets"), [(None, 1), ("127.0.0.1", 3)])
def test_bgsvc_serve_gives_each_client_behind_a_named_proxy_its_own_budget(
    serve_config: Callable[..., uvicorn.Config],
    tmp_path: Path,
    trusted: str | None,
    budgets: int,
) -> None:
    """Over TCP, through uvicorn and the auth middleware: three clients behind a proxy on
    127.0.0.1 fail to authenticate once each."""
    port = _free_port()
    overrides: dict[str, Any] = {"trusted_proxies": trusted} if trusted else {}
    config = serve_config(
        auth="required", auth_pepper=PEPPER, data_dir=tmp_path / "data", port=port, **overrides
    )
    fake = FakeLimits()
    config.app.state.limits = fake
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not uv.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        for client in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            r = httpx.get(
                f"http://127.0.0.1:{port}/jobs/x", headers={"X-Forwarded-For": client}, timeout=10
            )
            assert r.status_code == 401
    finally:
        uv.should_exit = True
        thread.join(30)
    assert len(set(fake.failed_from)) == budgets
    if trusted is None:
        assert set(fake.failed_from) == {"127.0.0.1"}


def test_a_local_fleet_trusts_its_nginx_and_the_proxies_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("BGSVC_TRUSTED_PROXIES", raising=False)
    local = ClusterConfig([NodeSpec(8001)], run_dir=tmp_path)
    node = Node(NodeSpec(8001), local, tmp_path)
    assert node.environment()["BGSVC_TRUSTED_PROXIES"] == "127.0.0.1/32"
    wildcard = ClusterConfig([NodeSpec(8001)], host="0.0.0.0", run_dir=tmp_path)
    env = Node(NodeSpec(8001), wildcard, tmp_path).environment()
    assert env["BGSVC_TRUSTED_PROXIES"] == "127.0.0.1/32,::1/128"
    monkeypatch.setenv("BGSVC_TRUSTED_PROXIES", "10.0.0.0/8")
    env = Node(NodeSpec(8001), local, tmp_path).environment()
    assert env["BGSVC_TRUSTED_PROXIES"] == "127.0.0.1/32,10.0.0.0/8"
    assert Settings(trusted_proxies=env["BGSVC_TRUSTED_PROXIES"]).forwarded_allow_ips
