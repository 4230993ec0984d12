"""The runtime pieces of the fleet, in-process and fast: drain on SIGTERM, gunicorn
settings, the start script and the nginx rendering used by `bgsvc cluster up`."""

from __future__ import annotations

import asyncio
import os
import runpy
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from bgsvc.cluster import ClusterConfig, NodeSpec, render_nginx_conf
from bgsvc.config import Settings, get_settings
from bgsvc.server import DrainingServer
from bgsvc.state import begin_drain, on_drain
from tests.deploy.nginx_render import NGINX_CONF

REPO = Path(__file__).resolve().parents[1]


async def _noop_app(scope: object, receive: object, send: object) -> None:
    return None


def _server(drain_seconds: float) -> DrainingServer:
    return DrainingServer(uvicorn.Config(_noop_app, log_config=None), drain_seconds)


def test_first_sigterm_opens_a_drain_window_before_the_usual_shutdown() -> None:
    calls: list[str] = []
    unregister = on_drain(lambda: calls.append("drain"))
    try:
        server = _server(drain_seconds=0.3)
        server.handle_exit(signal.SIGTERM, None)
        assert server.draining and not server.should_exit
        assert asyncio.run(server.on_tick(1)) is False
        assert calls == ["drain"]  # told from the loop, once
        assert asyncio.run(server.on_tick(1)) is False
        assert calls == ["drain"] and not server.should_exit
        asyncio.run(asyncio.sleep(0.35))
        assert asyncio.run(server.on_tick(1)) is True
        assert server.should_exit
    finally:
        unregister()


def test_a_second_signal_skips_the_rest_of_the_drain_window() -> None:
    server = _server(drain_seconds=60)
    server.handle_exit(signal.SIGTERM, None)
    assert not server.should_exit
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit


def test_a_draining_app_says_503_on_ready_but_still_serves(
    make_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = make_client()
    assert client.get("/ready").status_code == 200
    begin_drain()
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    served = client.post("/remove-background", files={"file": ("a.png", photo_png)})
    assert served.status_code == 200
    assert "bgsvc_ready 0.0" in client.get("/metrics").text


def test_a_loading_app_refuses_heavy_requests_with_503(
    make_client: Callable[..., TestClient], photo_png: bytes
) -> None:
    client = make_client(loader=lambda s: (_ for _ in ()).throw(AssertionError), wait=False)
    response = client.post("/remove-background", files={"file": ("a.png", photo_png)})
    assert response.status_code == 503


def test_worker_count_and_threads_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = len(os.sched_getaffinity(0))
    assert Settings(workers=1).effective_intra_op_threads == cores
    assert Settings(workers=cores * 4).effective_intra_op_threads == 1
    assert Settings(workers=2, intra_op_threads=3).effective_intra_op_threads == 3
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert Settings().workers == 3
    monkeypatch.setenv("BGSVC_WORKERS", "2")
    assert Settings().workers == 2


def test_gunicorn_conf_takes_its_values_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGSVC_HOST", "::1")
    monkeypatch.setenv("BGSVC_PORT", "9123")
    monkeypatch.setenv("BGSVC_WORKERS", "3")
    monkeypatch.setenv("BGSVC_DRAIN_SECONDS", "4")
    monkeypatch.setenv("BGSVC_REQUEST_TIMEOUT_S", "20")
    get_settings.cache_clear()
    try:
        conf = runpy.run_path(str(REPO / "deploy" / "gunicorn.conf.py"))
    finally:
        get_settings.cache_clear()
    assert conf["bind"] == ["[::1]:9123"]
    assert conf["workers"] == 3
    assert conf["worker_class"] == "bgsvc.server.DrainingUvicornWorker"
    # Longer than the drain window plus a full request budget.
    assert conf["graceful_timeout"] > 4 + 20
    # Never recycled: a recycle ends a worker without the drain (see the config's comment).
    assert conf["max_requests"] == 0
    assert conf["keepalive"] > 60  # nginx's upstream keepalive_timeout
    assert callable(conf["child_exit"]) and callable(conf["on_starting"])


def test_gunicorn_child_exit_marks_the_worker_dead(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        conf = runpy.run_path(str(REPO / "deploy" / "gunicorn.conf.py"))
    finally:
        get_settings.cache_clear()
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"")
    (tmp_path / "counter_4242.db").write_bytes(b"")

    class Worker:
        pid = 4242

    conf["child_exit"](None, Worker())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db"]


def test_start_script_wipes_the_metrics_dir_and_execs_gunicorn(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "counter_1.db").write_bytes(b"stale")
    fake = tmp_path / "bin" / "gunicorn"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\necho "args: $*"\nls -A "$PROMETHEUS_MULTIPROC_DIR"\necho "pid $$"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = REPO / "deploy" / "start.sh"
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    proc = subprocess.Popen(
        [str(script)], env=env, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    lines = out.splitlines()
    assert lines[0] == f"args: -c {REPO / 'deploy' / 'gunicorn.conf.py'} bgsvc.app:create_app()"
    assert "counter_1.db" not in out and metrics.is_dir()
    assert lines[-1] == f"pid {proc.pid}"  # exec: gunicorn is the script's own process


def test_cluster_renders_local_upstreams_and_paths() -> None:
    text = NGINX_CONF.read_text()
    servers = ["127.0.0.1:8001", "127.0.0.1:8002"]
    paths = {
        "listen": "127.0.0.1:8080",
        "pid": "/run/x/nginx.pid",
        "error_log": "/run/x/error.log",
        "access_log": "/run/x/access.log",
        "temp_dir": "/run/x/temp",
    }
    ours = render_nginx_conf(text, servers, **paths)
    assert "listen 127.0.0.1:8080;" in ours and "pid /run/x/nginx.pid;" in ours
    assert "server 127.0.0.1:8002 max_fails=3 fail_timeout=2s;" in ours
    assert "server 127.0.0.1:8002 backup max_fails=0;" in ours
    directives = "\n".join(line.split("#")[0] for line in ours.splitlines())
    assert "bgsvc-1" not in directives and "/var/cache/nginx" not in directives


def test_cluster_threads_fill_the_cores_once() -> None:
    cores = len(os.sched_getaffinity(0))
    three = ClusterConfig(nodes=[NodeSpec(p) for p in (1, 2, 3)])
    assert three.threads_per_worker == max(1, cores // 3)
    assert ClusterConfig(nodes=[NodeSpec(1)], threads=5).threads_per_worker == 5
    assert NodeSpec(8001).name == "node-8001"
