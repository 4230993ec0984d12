"""The fleet, for real: gunicorn nodes behind Debian's nginx on loopback.

Measured numbers (requests, failures, spread, drain time) are printed and written to
test-artifacts/cluster-measurements.json for docs/scaling.md.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bgsvc.cluster import Cluster
from tests.cluster.conftest import (
    REMOVE,
    Outcome,
    free_port_block,
    model_env,
    node_gauge,
    port_closed,
    post,
    record,
    stream,
    wait_for,
)

pytestmark = pytest.mark.cluster


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status != 200]


def test_cluster_up_spreads_requests_over_every_node_and_stops_cleanly(
    tmp_path: Path, cluster_models: dict[str, Path], images: list[bytes]
) -> None:
    base = free_port_block(4)
    node_ports, listen = [base, base + 1, base + 2], base + 3
    run_dir = tmp_path / "run"
    out = (tmp_path / "cluster.out").open("w")
    env = {**os.environ, **model_env(cluster_models, "tiny"), "BGSVC_DRAIN_SECONDS": "1"}
    command = [sys.executable, "-m", "bgsvc", "cluster", "up", "--nodes", "3"]
    command += ["--base-port", str(node_ports[0]), "--listen-port", str(listen)]
    command += ["--run-dir", str(run_dir)]
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    output = tmp_path / "cluster.out"
    try:
        wait_for(lambda: "ready: " in output.read_text() or proc.poll() is not None, 90, "ready")
        assert proc.poll() is None, output.read_text()

        outcomes = stream(f"http://127.0.0.1:{listen}{REMOVE}", images, total=60, threads=3)
        assert failures(outcomes) == []
        spread = Counter(o.served_by for o in outcomes)
        names = {f"node-{p}" for p in node_ports}
        assert set(spread) == names, spread
        # least_conn with equal load: no node is starved (an even spread is 20 each).
        assert min(spread.values()) >= 8, spread
        health = httpx.get(f"http://127.0.0.1:{listen}/health", timeout=5)
        assert health.status_code == 200 and "x-served-by" not in health.headers

        # A node that dies is started again by the supervisor, and says so.
        victim = f"node-{node_ports[0]}"
        os.killpg(node_arbiter(node_ports[0]), signal.SIGKILL)
        wait_for(lambda: f"{victim} ready again" in output.read_text(), 90, "restart")
        assert f"{victim} exited (status -9); restarting" in output.read_text()
        # SIGHUP: every node restarted in turn (a model or config reload).
        proc.send_signal(signal.SIGHUP)
        for port in node_ports:
            line = f"rolling restart: node-{port} ready again"
            wait_for(lambda line=line: line in output.read_text(), 120, line)
        after = stream(f"http://127.0.0.1:{listen}{REMOVE}", images, total=30, threads=3)
        assert failures(after) == []

        proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert proc.wait(timeout=90) == 0, output.read_text()
        stop_seconds = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    text = output.read_text()
    assert "stopped in" in text and "nginx=0" in text, text
    assert all(port_closed(p) for p in [*node_ports, listen])
    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert {f"node-{p}.log" for p in node_ports} | {"nginx-access.log"} <= logs
    access = (run_dir / "logs" / "nginx-access.log").read_text()
    assert access.count(f'"POST {REMOVE} HTTP/1.1" 200') == 90
    record(
        "spread",
        {
            "requests": len(outcomes),
            "failed": len(failures(outcomes)),
            "per_node": dict(sorted(spread.items())),
            "stop_seconds": round(stop_seconds, 1),
        },
    )


def node_arbiter(port: int) -> int:
    """The gunicorn arbiter (its process group's leader) of the node on ``port``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            pid = int(entry.name)
            if f"BGSVC_PORT={port}".encode() in environ and os.getpgid(pid) == pid:
                return pid
        except (OSError, ProcessLookupError):
            continue
    raise AssertionError(f"no node process for port {port}")


def test_kill_9_of_one_node_fails_no_client_request(
    make_cluster: Callable[..., Cluster], cluster_models: dict[str, Path], images: list[bytes]
) -> None:
    # A ~0.5 s model on every node: at the kill, requests are in flight on the victim.
    cluster = make_cluster(**model_env(cluster_models, "slow"))
    victim = cluster.nodes[1]
    killed = threading.Event()
    killed_at: list[float] = []

    def kill_after_some(done: int) -> None:
        if done >= 20 and not killed.is_set():
            killed.set()
            victim.kill()
            killed_at.append(time.monotonic())

    outcomes = stream(
        f"{cluster.url}{REMOVE}", images, total=90, threads=4, on_progress=kill_after_some
    )
    assert killed.is_set() and not victim.alive()
    assert failures(outcomes) == [], failures(outcomes)[:5]
    after = [o for o in outcomes if o.started > killed_at[0]]
    assert len(after) >= 40
    # The dead node served nothing that started after its death...
    assert victim.name not in {o.served_by for o in after}
    # ...and the two survivors took all of it.
    survivors = Counter(o.served_by for o in after)
    assert set(survivors) == {n.name for n in cluster.nodes if n is not victim}, survivors

    # nginx's view: every try that hit the dead node was retried on another one.
    addr = f"127.0.0.1:{victim.port}"
    lines = [line for line in cluster.nginx.access_log.read_text().splitlines() if REMOVE in line]
    retried = [line for line in lines if re.search(r"upstream=[^ ]*, ", line)]
    for line in retried:
        tries = re.search(r"upstream=(.*?) upstream_status=", line)[1]  # type: ignore[index]
        assert not tries.endswith(addr), line
    record(
        "kill_9",
        {
            "requests": len(outcomes),
            "failed": len(failures(outcomes)),
            "client_threads": 4,
            "per_node": dict(sorted(Counter(o.served_by for o in outcomes).items())),
            "after_kill_per_node": dict(sorted(survivors.items())),
            "retried_by_nginx": len(retried),
        },
    )


def test_sigterm_finishes_every_in_flight_request(
    make_cluster: Callable[..., Cluster], cluster_models: dict[str, Path], images: list[bytes]
) -> None:
    cluster = make_cluster(nodes=1, BGSVC_DRAIN_SECONDS="2", **model_env(cluster_models, "slow"))
    node = cluster.nodes[0]
    url = f"{node.url}{REMOVE}"
    in_flight = 4
    results: list[Outcome] = []
    started: list[bytes] = []
    lock = threading.Lock()

    def one() -> None:
        with lock:
            body = images[len(started)]
            started.append(body)
        with httpx.Client(timeout=60) as client:
            outcome = post(client, url, body)
        with lock:
            results.append(outcome)

    clients = [threading.Thread(target=one) for _ in range(in_flight)]
    for t in clients:
        t.start()
    # Straight at the node, no balancer to retry: 1 in inference, 3 queued behind it.
    wait_for(
        lambda: (
            node_gauge(node.url, "bgsvc_inflight_inferences")
            + node_gauge(node.url, "bgsvc_queued_requests")
            == in_flight
        ),
        30,
        "requests in flight",
    )
    assert not results
    node.terminate()
    sent_at = time.monotonic()

    # First: /ready turns 503 while the node still listens...
    wait_for(lambda: httpx.get(f"{node.url}/ready", timeout=5).status_code == 503, 5, "503")
    assert httpx.get(f"{node.url}/ready", timeout=5).json() == {"status": "draining"}
    # ...and a request that still arrives in the drain window is served, not refused.
    late = threading.Thread(target=one)
    late.start()
    late.join(60)
    for t in clients:
        t.join(60)
    status = node.wait(60)
    drain_seconds = time.monotonic() - sent_at

    assert [r.status for r in results] == [200] * (in_flight + 1), results
    assert {r.served_by for r in results} == {node.name}
    assert status == 0
    assert port_closed(node.port)
    log = node.log_path.read_text()
    assert "draining: /ready now answers 503" in log
    assert "Traceback" not in log
    record(
        "sigterm_drain",
        {
            "in_flight_at_sigterm": in_flight,
            "accepted_during_drain": 1,
            "completed_200": sum(r.status == 200 for r in results),
            "drain_window_s": 2,
            "sigterm_to_exit_s": round(drain_seconds, 1),
        },
    )


def test_sigterm_of_a_node_under_load_fails_no_client_request(
    make_cluster: Callable[..., Cluster], cluster_models: dict[str, Path], images: list[bytes]
) -> None:
    cluster = make_cluster(**model_env(cluster_models, "slow"))
    victim = cluster.nodes[0]
    stopped = threading.Event()

    def stop_after_some(done: int) -> None:
        if done >= 15 and not stopped.is_set():
            stopped.set()
            victim.terminate()

    outcomes = stream(
        f"{cluster.url}{REMOVE}", images, total=60, threads=4, on_progress=stop_after_some
    )
    assert stopped.is_set()
    assert failures(outcomes) == [], failures(outcomes)[:5]
    assert victim.wait(60) == 0
    record(
        "sigterm_under_load",
        {
            "requests": len(outcomes),
            "failed": len(failures(outcomes)),
            "per_node": dict(sorted(Counter(o.served_by for o in outcomes).items())),
        },
    )


def test_node_still_loading_its_model_gets_no_traffic(
    make_cluster: Callable[..., Cluster], cluster_models: dict[str, Path], images: list[bytes]
) -> None:
    # Node 3 warms a model that takes seconds; it answers /ready 503 meanwhile.
    slow_start = model_env(cluster_models, "tiny", allow=["tiny", "slowwarm"])
    cluster = make_cluster(node_env={2: slow_start}, wait=False)
    loading = cluster.nodes[2]
    cluster.wait_ready(timeout=90, nodes=cluster.nodes[:2])
    wait_for(
        lambda: loading.alive() and _ready_status(loading.url) == "loading model", 30, "loading"
    )

    during = stream(f"{cluster.url}{REMOVE}", images, total=30, threads=3)
    still_loading = _ready_status(loading.url) == "loading model"
    assert still_loading, "the slow model warmed up before the traffic ended: make it slower"
    assert failures(during) == []
    spread_during = Counter(o.served_by for o in during)
    assert loading.name not in spread_during, spread_during

    # Control: once ready, the same node does get traffic.
    cluster.wait_ready(timeout=120)
    after = stream(f"{cluster.url}{REMOVE}", images, total=30, threads=3)
    assert failures(after) == []
    spread_after = Counter(o.served_by for o in after)
    assert spread_after[loading.name] > 0, spread_after
    record(
        "not_ready",
        {
            "requests_while_loading": len(during),
            "failed": len(failures(during)),
            "per_node_while_loading": dict(sorted(spread_during.items())),
            "per_node_after_ready": dict(sorted(spread_after.items())),
        },
    )


def _ready_status(url: str) -> str | None:
    try:
        body: dict[str, str] = httpx.get(f"{url}/ready", timeout=5).json()
    except httpx.HTTPError:
        return None
    return body.get("status")
