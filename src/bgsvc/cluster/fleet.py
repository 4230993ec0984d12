"""The fleet: nodes and the balancer started, watched and stopped together; the
foreground `bgsvc cluster up`."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import IO

from bgsvc.cluster.common import ClusterError, find_deploy_dir, http_status, port_is_free
from bgsvc.cluster.nginx import Nginx
from bgsvc.cluster.nodes import DEFAULT_TLS_PORT, ClusterConfig, Node
from bgsvc.cluster.redisd import RedisServer, check_client, free_port
from bgsvc.cluster.supervisor import Supervised, Supervisor

# After a restarted node is ready, before the next one goes down: nginx may still hold
# the first one as failed for its fail_timeout (2 s, deploy/nginx/nginx.conf).
SETTLE_S = 2.5
# redis-server answers PING within milliseconds of its start; a long AOF replay may take more.
REDIS_READY_S = 30.0


class Cluster:
    """Start, watch and stop the nodes and the balancer; a context manager."""

    def __init__(self, config: ClusterConfig) -> None:
        self.redis: RedisServer | None = None
        if config.redis:
            taken = {spec.port for spec in config.nodes} | {config.listen_port, config.tls_port}
            port = config.redis_port or free_port(config.host, taken)
            self.redis = RedisServer(config.host, port, config.run_dir)
            config = replace(config, env={**config.env, "BGSVC_REDIS_URL": self.redis.url})
        self.config = config
        self.deploy_dir = config.deploy_dir or find_deploy_dir()
        self.nodes = [Node(spec, config, self.deploy_dir) for spec in config.nodes]
        self.nginx = Nginx(config, self.deploy_dir)
        self.supervisor: Supervisor | None = None

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
        ports += [self.config.tls_port] if self.config.tls else []
        ports += [self.redis.port] if self.redis else []
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
            # Redis first: a node's job runner and cache connect to it as they start.
            if self.redis is not None:
                check_client()
                self.start_redis()
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
            if self.redis is not None and not self.redis.alive() and self.supervisor is None:
                raise ClusterError(f"redis-server exited; see {self.redis.log_path}")
            # Plain HTTP: nginx answers /health there without a redirect, TLS or not.
            if not waiting and http_status(f"{self.nginx.plain_url}/health") == 200:
                return
            time.sleep(poll)
        names = ", ".join(n.name for n in waiting) or "nginx"
        raise ClusterError(f"not ready after {timeout:.0f}s: {names}; see {self.log_dir}")

    def supervise(self, say: Callable[[str], None] = print) -> Supervisor:
        """From now on, restart any node that dies (see bgsvc.cluster.supervisor)."""
        if self.supervisor is None:
            watched: list[Supervised] = [*self.nodes]
            if self.redis is not None:
                watched.append(self.redis)
            self.supervisor = Supervisor(watched, say)
            self.supervisor.start()
        return self.supervisor

    def start_redis(self, timeout: float = REDIS_READY_S) -> None:
        """Start the fleet's redis-server (again) and wait until it answers PING; the
        supervisor, if any, watches it again."""
        redis = self._own_redis()
        if redis.alive():
            raise ClusterError("redis-server is already running")
        redis.close()
        redis.start()
        deadline = time.monotonic() + timeout
        while not redis.ready():
            if not redis.alive() or time.monotonic() > deadline:
                raise ClusterError(f"redis-server did not start; see {redis.log_path}")
            time.sleep(0.02)
        if self.supervisor is not None:
            self.supervisor.watch_again(redis)

    def stop_redis(self, kill: bool = False, timeout: float = 10.0) -> int | None:
        """Stop the fleet's redis-server on purpose (SIGTERM, or SIGKILL with ``kill``,
        as a crash would) and keep it stopped until start_redis. Its exit status."""
        redis = self._own_redis()
        if self.supervisor is not None:
            self.supervisor.leave_alone(redis)
        if kill:
            redis.kill()
        else:
            redis.terminate()
            if redis.wait(timeout) is None:
                redis.kill()
        status = redis.wait(timeout)
        redis.close()
        return status

    def _own_redis(self) -> RedisServer:
        if self.redis is None:
            raise ClusterError("this cluster runs no redis-server (ClusterConfig.redis)")
        return self.redis

    def restart_node(self, node: Node, ready_timeout: float = 300.0) -> float:
        """Planned restart of one node: SIGTERM (its drain: /ready 503, still serving,
        then no longer listening, in-flight work finished), then a fresh start, until it
        is ready. Returns the seconds it was away."""
        hold = self.supervisor.hold(node) if self.supervisor else contextlib.nullcontext()
        began = time.monotonic()
        with hold:
            node.terminate()
            if node.wait(_graceful_timeout() + 5) is None:
                node.kill()
            node.close()
            node.start()
            self.wait_ready(ready_timeout, nodes=[node])
        return time.monotonic() - began

    def rolling_restart(
        self, ready_timeout: float = 300.0, say: Callable[[str], None] = print
    ) -> dict[str, float]:
        """Every node in turn, the next one only once the last is serving again: the
        fleet never loses more than one node, and a node's model and configuration files
        are read afresh (a model or config reload)."""
        away: dict[str, float] = {}
        for node in self.nodes:
            say(f"rolling restart: {node.name}")
            away[node.name] = self.restart_node(node, ready_timeout)
            say(f"rolling restart: {node.name} ready again after {away[node.name]:.1f}s")
            time.sleep(SETTLE_S)
        return away

    def stop(self, timeout: float | None = None) -> dict[str, int | None]:
        """nginx first (it finishes what it is proxying), then every node drains at once;
        whatever is still running after ``timeout`` is killed. Exit status per process."""
        if timeout is None:
            timeout = _graceful_timeout() + 5
        if self.supervisor is not None:
            self.supervisor.stop()
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
        # Last: the nodes' drains may still write job states to it.
        if self.redis is not None and self.redis.process is not None:
            statuses[self.redis.name] = self.stop_redis(timeout=max(5.0, timeout / 2))
        return statuses

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _graceful_timeout() -> float:
    from bgsvc.config import Settings

    return Settings().graceful_timeout_s


@contextlib.contextmanager
def _stop_signals() -> Iterator[tuple[list[int], list[int]]]:
    """Collect SIGINT/SIGTERM (stop) and SIGHUP (rolling restart) instead of dying, so the
    cluster is stopped or restarted cleanly."""
    received: list[int] = []
    reloads: list[int] = []

    def handler(signum: int, _: FrameType | None) -> None:
        (reloads if signum == signal.SIGHUP else received).append(signum)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield received, reloads
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_foreground(
    config: ClusterConfig, ready_timeout: float = 300.0, out: IO[str] = sys.stdout
) -> int:
    """``bgsvc cluster up``: start, report, restart nodes that die, restart every node in
    turn on SIGHUP (a model or config reload), run until Ctrl-C/SIGTERM, stop everything."""

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    cluster = Cluster(config)
    with _stop_signals() as (received, reloads):
        cluster.start()
        names = ", ".join(f"{n.name} ({n.url})" for n in cluster.nodes)
        say(
            f"starting {len(cluster.nodes)} nodes: {names}; "
            f"{config.workers} worker(s) x {config.threads_per_worker} thread(s) each"
        )
        if cluster.redis is not None:
            say(
                f"redis: {cluster.redis.url} (append-only, in {cluster.redis.data_dir.resolve()}); "
                "BGSVC_REDIS_URL of every node"
            )
        if config.data_dir is not None:
            say(f"data: {config.data_dir.resolve()} (BGSVC_DATA_DIR of every node)")
        say(f"logs: {cluster.log_dir.resolve()}")
        tls = cluster.nginx.tls_files
        if tls is not None:
            trust = f"--cacert {tls.ca}" if tls.ca is not None else "(your CA)"
            say(
                f"tls: {tls.cert} (key {tls.key}); "
                f"{cluster.nginx.plain_url} redirects to {cluster.url}; "
                f"curl {trust} {cluster.url}/health"
            )
        code = 0
        try:
            _wait_until_ready(cluster, ready_timeout, received, say)
            if not received:
                say(
                    f"ready: {cluster.url} (nginx least_conn); nodes that die are restarted; "
                    "SIGHUP restarts every node in turn; Ctrl-C to stop"
                )
                cluster.supervise(say)
            while not received:
                if not cluster.nginx.alive():
                    say(f"nginx exited; see {cluster.nginx.error_log}")
                    code = 1
                    break
                if reloads:
                    reloads.clear()
                    cluster.rolling_restart(ready_timeout, say)
                time.sleep(0.2)
        except ClusterError as exc:
            say(f"bgsvc: error: {exc}")
            code = 1
        say("stopping: nginx, then draining the nodes" + (", then redis" if cluster.redis else ""))
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
    redis: bool = False,
    redis_port: int | None = None,
    data_dir: Path | None = None,
    tls: bool = False,
    tls_port: int = DEFAULT_TLS_PORT,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    edge_rate_per_s: int = 100,
    edge_burst: int = 200,
) -> ClusterConfig:
    """The configuration `bgsvc cluster up` builds from its options."""
    if nodes < 1:
        raise ClusterError("--nodes must be at least 1")
    if redis_port is not None and not redis:
        raise ClusterError(
            "--redis-port needs the fleet's own Redis (no BGSVC_REDIS_URL, no --no-redis)"
        )
    return ClusterConfig.local(
        nodes,
        base_port,
        host=host,
        listen_port=listen_port,
        run_dir=run_dir,
        workers=workers,
        threads=threads,
        env=dict(env or {}),
        redis=redis,
        redis_port=redis_port,
        data_dir=data_dir,
        tls=tls,
        tls_port=tls_port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        edge_rate_per_s=edge_rate_per_s,
        edge_burst=edge_burst,
    )
