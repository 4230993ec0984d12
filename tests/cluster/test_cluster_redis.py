"""The fleet's own redis-server: started for the nodes, watched by the supervisor, stopped
with the fleet; and `bgsvc cluster up` starting it by default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from bgsvc.cluster import Cluster
from tests.cluster.conftest import REMOVE, free_port_block, model_env, port_closed, wait_for

pytestmark = pytest.mark.cluster


def environ_of(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def arbiter_of(port: int) -> int:
    """The gunicorn arbiter (its process group's leader) of the node on ``port``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            pid = int(entry.name)
            if environ_of(pid).get("BGSVC_PORT") == str(port) and os.getpgid(pid) == pid:
                return pid
        except (OSError, ProcessLookupError, UnicodeDecodeError):
            continue
    raise AssertionError(f"no node process for port {port}")


def test_fleet_redis_serves_every_nodes_cache_and_jobs_and_stops_with_the_fleet(
    make_cluster: Callable[..., Cluster], images: list[bytes]
) -> None:
    cluster = make_cluster(nodes=2, redis=True)
    assert cluster.redis is not None
    first, second = cluster.nodes
    envs = [environ_of(node.pid) for node in cluster.nodes]
    assert {env["BGSVC_REDIS_URL"] for env in envs} == {cluster.redis.url}
    assert {env["BGSVC_DATA_DIR"] for env in envs} == {str(cluster.config.data_dir.resolve())}  # type: ignore[union-attr]

    body = {"file": ("img.png", images[0], "image/png")}
    computed = httpx.post(f"{first.url}{REMOVE}", files=body, timeout=30)
    assert computed.status_code == 200 and computed.headers["x-cache"] == "MISS"
    # The second node never saw this image: its answer comes from the fleet's Redis.
    shared = httpx.post(f"{second.url}{REMOVE}", files=body, timeout=30)
    assert shared.status_code == 200 and shared.headers["x-cache"] == "HIT"
    assert shared.content == computed.content

    # Jobs submitted through the balancer finish, and every node answers for each one.
    with httpx.Client(timeout=30) as client:
        ids = []
        for image in images[1:5]:
            files = {"file": ("img.png", image, "image/png")}
            submitted = client.post(f"{cluster.url}/jobs", files=files)
            assert submitted.status_code == 202, submitted.text
            ids.append(submitted.json()["id"])

        def finished(job_id: str, node_url: str) -> bool:
            return client.get(f"{node_url}/jobs/{job_id}").json()["status"] == "succeeded"

        for job_id in ids:
            for node in cluster.nodes:
                wait_for(lambda j=job_id, u=node.url: finished(j, u), 30, f"{job_id} done")
                result = client.get(f"{node.url}/jobs/{job_id}/result")
                assert result.status_code == 200 and result.content[:4] == b"\x89PNG"

    statuses = cluster.stop(timeout=30)
    # SIGTERM after the nodes have drained: a clean exit, its port closed, the AOF kept.
    assert statuses["redis"] == 0, statuses
    assert port_closed(cluster.redis.port)
    assert (cluster.redis.data_dir / "appendonlydir").is_dir()


def test_supervisor_restarts_a_killed_redis_server_without_losing_acknowledged_writes(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=1, redis=True)
    assert cluster.redis is not None
    lines: list[str] = []
    cluster.supervise(lines.append)
    with redis.Redis.from_url(cluster.redis.url, socket_timeout=2) as client:
        client.set("accepted", "job-1")
        assert cluster.redis.process is not None
        os.kill(cluster.redis.process.pid, signal.SIGKILL)
        wait_for(lambda: any("redis ready again" in line for line in lines), 30, "restart")
        # The nodes' policy: a death this soon after the start waits 1 s (crash loop).
        assert lines[0].startswith("redis exited (status -9); restarting"), lines
        # appendfsync always: the write acknowledged before the kill survived it.
        assert client.get("accepted") == b"job-1"

        # Stopped on purpose, the supervisor leaves it down until it is started again.
        assert cluster.stop_redis() == 0
        wait_for(lambda: port_closed(cluster.redis.port), 10, "redis stopped")  # type: ignore[union-attr]
        restarts = len(cluster.supervisor.restarts)  # type: ignore[union-attr]
        time.sleep(0.5)  # five supervisor polls
        assert not cluster.redis.alive()
        assert len(cluster.supervisor.restarts) == restarts  # type: ignore[union-attr]
        cluster.start_redis()
        assert client.get("accepted") == b"job-1"


def test_cluster_up_starts_redis_for_its_nodes_and_stops_it_with_them(
    tmp_path: Path, cluster_models: dict[str, Path]
) -> None:
    base = free_port_block(3)
    node_port, listen, redis_port = base, base + 1, base + 2
    run_dir = tmp_path / "run"
    output = tmp_path / "cluster.out"
    env = {**os.environ, **model_env(cluster_models, "tiny"), "BGSVC_DRAIN_SECONDS": "1"}
    env.pop("BGSVC_REDIS_URL", None)
    env.pop("BGSVC_DATA_DIR", None)
    command = [sys.executable, "-m", "bgsvc", "cluster", "up", "--nodes", "1"]
    command += ["--base-port", str(node_port), "--listen-port", str(listen)]
    command += ["--redis-port", str(redis_port), "--run-dir", str(run_dir)]
    with output.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "ready: " in output.read_text() or proc.poll() is not None, 90, "ready")
        assert proc.poll() is None, output.read_text()
        node_env = environ_of(arbiter_of(node_port))
        assert node_env["BGSVC_REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/0"
        assert node_env["BGSVC_DATA_DIR"] == str((run_dir / "data").resolve())
        with redis.Redis(port=redis_port, socket_timeout=2) as client:
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, output.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.read_text()
    assert f"redis: redis://127.0.0.1:{redis_port}/0" in text
    assert "redis=0" in text, text
    assert port_closed(redis_port) and port_closed(node_port)
