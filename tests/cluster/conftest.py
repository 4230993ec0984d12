"""Real clusters on loopback for the cluster tests: gunicorn nodes (deploy/start.sh) and
Debian's nginx, started and stopped by each test, on free ports, in the test's tmp dir."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bgsvc.cluster import Cluster, ClusterConfig, NodeSpec, port_is_free
from tests.conftest import encode_image, subject_image
from tests.models import TINY_SIZE, build_slow_model, build_tiny_model

# A forward pass of ~0.5 s on one thread: requests stay in flight long enough to SIGTERM.
SLOW = {"size": 256, "channels": 64, "layers": 20}
# Warm-up of several seconds: a node stays "loading model" while the test sends traffic.
SLOW_WARMUP = {"size": 512, "channels": 64, "layers": 80}

REMOVE = "/remove-background"
REPO = Path(__file__).resolve().parents[2]
MEASUREMENTS = REPO / "test-artifacts" / "cluster-measurements.json"


def record(name: str, values: dict[str, Any]) -> None:
    """Print a measurement and keep it in test-artifacts/ for the tables of docs/scaling.md."""
    print(f"\n[{name}] {json.dumps(values)}")
    MEASUREMENTS.parent.mkdir(exist_ok=True)
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data[name] = values
    MEASUREMENTS.write_text(json.dumps(data, indent=2) + "\n")


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports nobody listens on now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.fixture(scope="session")
def cluster_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cluster-models")
    return {
        "tiny": build_tiny_model(root / "tiny.onnx"),
        "slow": build_slow_model(root / "slow.onnx", **SLOW),
        "slowwarm": build_slow_model(root / "slowwarm.onnx", **SLOW_WARMUP),
    }


def model_env(models: dict[str, Path], default: str, allow: Sequence[str] = ()) -> dict[str, str]:
    """Environment selecting generated models for a node."""
    sizes = {"tiny": TINY_SIZE, "slow": SLOW["size"], "slowwarm": SLOW_WARMUP["size"]}
    custom = {
        name: {"path": str(path), "profile": "imgly", "input_size": sizes[name]}
        for name, path in models.items()
    }
    env = {
        "BGSVC_CUSTOM_MODELS": json.dumps(custom),
        "BGSVC_DEFAULT_MODEL": default,
        # Prepared (optimised) copies go next to the generated models, not into the
        # user's model cache.
        "BGSVC_MODEL_DIR": str(next(iter(models.values())).parent / "model-dir"),
        # The rehearsal before /ready warms a real photo's stages, which no fleet test
        # measures, and every node start under load would pay its CPU; it has tests of
        # its own (tests/inference/test_service_stages.py) and runs in every test that
        # starts a single node as a process.
        "BGSVC_WARM_STAGES": "false",
    }
    if allow:
        env["BGSVC_MODELS"] = json.dumps(list(allow))
    if {default, *allow} & {"slow", "slowwarm"}:
        # The slow models are sized to keep a node busy for a known while on ONNX Runtime
        # float32; OpenVINO's bf16 (which the default engine choice picks here) runs them
        # 16 times faster, and the tests built on their slowness would race.
        env["BGSVC_ENGINE"] = "onnxruntime"
    return env


@pytest.fixture
def make_cluster(
    tmp_path: Path, cluster_models: dict[str, Path]
) -> Iterator[Callable[..., Cluster]]:
    """Start a cluster of ``nodes`` tiny-model nodes (per-node env overrides allowed;
    ``redis=True``: with its own redis-server, ``cluster.redis``; ``tls=True``: HTTPS
    with a throwaway CA, ``cluster.nginx.tls_files.ca``). nginx's per-address flood
    guard is off unless ``edge_rate_per_s`` is given: these tests send thousands of
    requests per second from one address, 127.0.0.1, which is what the guard stops."""
    started: list[Cluster] = []

    def factory(
        nodes: int = 3,
        node_env: dict[int, dict[str, str]] | None = None,
        wait: bool = True,
        redis: bool = False,
        tls: bool = False,
        edge_rate_per_s: int = 0,
        edge_burst: int = 0,
        **env: str,
    ) -> Cluster:
        ports = free_ports(nodes + 2)
        base_env = {
            **model_env(cluster_models, "tiny"),
            "BGSVC_DRAIN_SECONDS": "1",
            "BGSVC_MAX_QUEUE": "8",
            "BGSVC_LOG_LEVEL": "info",
            **env,
        }
        specs = [
            NodeSpec(port, dict((node_env or {}).get(i, {}))) for i, port in enumerate(ports[:-2])
        ]
        config = ClusterConfig(
            nodes=specs,
            listen_port=ports[-2],
            tls=tls,
            tls_port=ports[-1],
            edge_rate_per_s=edge_rate_per_s,
            edge_burst=edge_burst,
            run_dir=tmp_path / f"cluster-{len(started)}",
            env=base_env,
            # The fleet's own redis-server, and one data directory for its nodes, as
            # `bgsvc cluster up` has them.
            redis=redis,
            data_dir=tmp_path / f"cluster-{len(started)}" / "data" if redis else None,
        )
        cluster = Cluster(config)
        started.append(cluster)
        cluster.start()
        if wait:
            cluster.wait_ready(timeout=90)
        return cluster

    yield factory
    for cluster in started:
        cluster.stop(timeout=60)


def unique_image(index: int) -> bytes:
    """A distinct small PNG per index, so no result cache can answer instead of the model."""
    img = subject_image((96, 64))
    img.putpixel((index % 96, 0), (index % 251, (index // 251) % 251, 7))
    img.putpixel((0, 63), (index % 256, 1, 2))
    return encode_image(img)


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    return [unique_image(i) for i in range(400)]


@dataclass
class Outcome:
    """One client request: when it started (monotonic), its status and serving node."""

    started: float
    status: int | None
    served_by: str | None
    error: str | None = None


def post(client: httpx.Client, url: str, body: bytes) -> Outcome:
    started = time.monotonic()
    try:
        response = client.post(url, files={"file": ("img.png", body, "image/png")})
    except httpx.HTTPError as exc:
        return Outcome(started, None, None, repr(exc))
    return Outcome(started, response.status_code, response.headers.get("x-served-by"))


def stream(
    url: str,
    bodies: Sequence[bytes],
    total: int,
    threads: int,
    on_progress: Callable[[int], None] | None = None,
    timeout: float = 60.0,
) -> list[Outcome]:
    """``total`` POSTs of distinct bodies from ``threads`` clients (each one keep-alive
    connection); ``on_progress(n)`` runs after each completed request, n = completed."""
    assert len(bodies) >= total
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        with httpx.Client(timeout=timeout) as client:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                outcome = post(client, url, bodies[index])
                with lock:
                    outcomes.append(outcome)
                    done = len(outcomes)
                if on_progress is not None:
                    on_progress(done)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout * total)
    assert len(outcomes) == total, "client threads did not finish"
    return outcomes


def node_gauge(url: str, name: str) -> float:
    """Sum of a metric's samples on one node's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def free_port_block(count: int) -> int:
    """First of ``count`` consecutive free loopback ports (as `--base-port` needs)."""
    for base in range(20000, 60000, 97):
        if all(port_is_free("127.0.0.1", base + i) for i in range(count)):
            return base
    raise AssertionError("no block of free ports")


def port_closed(port: int) -> bool:
    with closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0
