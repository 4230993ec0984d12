"""The fleet: nodes and the balancer started, watched and stopped together; the
foreground `bgsvc cluster up`."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from bgsvc.cluster.common import ClusterError, find_deploy_dir, http_status, port_is_free
from bgsvc.cluster.nginx import Nginx
from bgsvc.cluster.nodes import ClusterConfig, Node


class Cluster:
    """Start, watch and stop the nodes and the balancer; a context manager."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.deploy_dir = config.deploy_dir or find_deploy_dir()
        self.nodes = [Node(spec, config, self.deploy_dir) for spec in config.nodes]
        self.nginx = Nginx(config, self.deploy_dir)

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def log_dir(self) -> Path:
        return self.config.run_dir / "logs"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def start(self) -> None:
        """Start every node, then nginx; returns at once (see wait_ready)."""
        ports = [n.port for n in self.nodes] + [self.config.listen_port]
        if len(set(ports)) != len(ports):
            raise ClusterError(f"ports overlap: {ports}")
        busy = [p for p in ports if not port_is_free(self.config.host, p)]
        if busy:
            raise ClusterError(
                f"port(s) {', '.join(map(str, busy))} on {self.config.host} already in use "
                "(another cluster running?)"
            )
        for path in (self.log_dir, self.config.run_dir / "metrics"):
            path.mkdir(parents=True, exist_ok=True)
        try:
            for node in self.nodes:
                node.start()
            self.nginx.start()
        except BaseException:
            self.stop(timeout=10)
            raise

    def wait_ready(
        self, timeout: float, nodes: Sequence[Node] | None = None, poll: float = 0.2
    ) -> None:
        """Until each of ``nodes`` (default: all) answers /ready 200 and nginx answers
        /health; raises ClusterError naming the log to read otherwise."""
        waiting = list(self.nodes if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in list(waiting):
                if not node.alive():
                    raise ClusterError(f"{node.name} exited; see {node.log_path}")
                if node.ready():
                    waiting.remove(node)
            if not self.nginx.alive():
                raise ClusterError(f"nginx exited; see {self.nginx.error_log}")
            if not waiting and http_status(f"{self.url}/health") == 200:
                return
            time.sleep(poll)
        names = ", ".join(n.name for n in waiting) or "nginx"
        raise ClusterError(f"not ready after {timeout:.0f}s: {names}; see {self.log_dir}")

    def stop(self, timeout: float | None = None) -> dict[str, int | None]:
        """nginx first (it finishes what it is proxying), then every node drains at once;
        whatever is still running after ``timeout`` is killed. Exit status per process."""
        from bgsvc.config import Settings

        if timeout is None:
            timeout = Settings().graceful_timeout_s + 5
        self.nginx.stop(timeout)
        for node in self.nodes:
            node.terminate()
        statuses: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.process is None:
                continue
            status = node.wait(max(0.0, deadline - time.monotonic()))
            if status is None:
                node.kill()
                status = node.wait(5)
            statuses[node.name] = status
            node.close()
        if self.nginx.process is not None:
            statuses["nginx"] = self.nginx.process.returncode
        return statuses

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """Collect SIGINT/SIGTERM instead of dying, so the cluster is stopped cleanly."""
    received: list[int] = []

    def handler(signum: int, _: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_foreground(
    config: ClusterConfig, ready_timeout: float = 300.0, out: IO[str] = sys.stdout
) -> int:
    """``bgsvc cluster up``: start, report, run until Ctrl-C/SIGTERM, stop everything."""

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    cluster = Cluster(config)
    with _stop_signals() as received:
        cluster.start()
        names = ", ".join(f"{n.name} ({n.url})" for n in cluster.nodes)
        say(
            f"starting {len(cluster.nodes)} nodes: {names}; "
            f"{config.workers} worker(s) x {config.threads_per_worker} thread(s) each"
        )
        say(f"logs: {cluster.log_dir.resolve()}")
        code = 0
        try:
            _wait_until_ready(cluster, ready_timeout, received, say)
            if not received:
                say(f"ready: {cluster.url} (nginx least_conn); Ctrl-C to stop")
            down: set[str] = set()
            while not received:
                if not cluster.nginx.alive():
                    say(f"nginx exited; see {cluster.nginx.error_log}")
                    code = 1
                    break
                for node in cluster.nodes:
                    if node.name not in down and not node.alive():
                        down.add(node.name)
                        say(f"{node.name} exited (status {node.wait(0)}); the others serve on")
                time.sleep(0.2)
        except ClusterError as exc:
            say(f"bgsvc: error: {exc}")
            code = 1
        say("stopping: nginx, then draining the nodes")
        started = time.monotonic()
        statuses = cluster.stop()
        summary = ", ".join(f"{name}={status}" for name, status in statuses.items())
        say(f"stopped in {time.monotonic() - started:.1f}s ({summary})")
    return code


def _wait_until_ready(
    cluster: Cluster, timeout: float, received: list[int], say: Callable[[str], None]
) -> None:
    deadline = time.monotonic() + timeout
    pending = list(cluster.nodes)
    while pending and not received:
        if time.monotonic() > deadline:
            raise ClusterError(f"not ready after {timeout:.0f}s; see {cluster.log_dir}")
        for node in list(pending):
            if not node.alive():
                raise ClusterError(f"{node.name} exited; see {node.log_path}")
            if node.ready():
                pending.remove(node)
                say(f"{node.name} ready")
        time.sleep(0.2)
    if not received:
        cluster.wait_ready(max(1.0, deadline - time.monotonic()))


def config_from_args(
    nodes: int,
    base_port: int,
    host: str,
    listen_port: int,
    run_dir: Path,
    workers: int,
    threads: int,
    env: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """The configuration `bgsvc cluster up` builds from its options."""
    if nodes < 1:
        raise ClusterError("--nodes must be at least 1")
    return ClusterConfig.local(
        nodes,
        base_port,
        host=host,
        listen_port=listen_port,
        run_dir=run_dir,
        workers=workers,
        threads=threads,
        env=dict(env or {}),
    )
