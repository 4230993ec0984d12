"""A local fleet on loopback: N service nodes (gunicorn via deploy/start.sh) behind a real
nginx rendered from deploy/nginx/nginx.conf. ``bgsvc cluster up`` runs it in the
foreground; the tests drive :class:`Cluster` directly.

Each node is its own process group (so ``kill -9`` of a node takes its workers too, like
a lost machine) with its own Prometheus multiprocess directory; logs of every process
go to one folder (``.cluster/logs`` by default).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 8001
DEFAULT_LISTEN_PORT = 8080
DEFAULT_RUN_DIR = Path(".cluster")

BEGIN_SERVERS = "# BEGIN UPSTREAM SERVERS"
END_SERVERS = "# END UPSTREAM SERVERS"
NGINX_TEMP_ROOT = "/var/cache/nginx"
_TAGGED = re.compile(
    r"^(?P<indent>\s*)(?P<body>.*?)\s*#\s*(?P<tag>LISTEN|PID|ERROR_LOG|ACCESS_LOG|TEMP)\s*$"
)
_SERVER = re.compile(r"^\s*server\s+(?P<addr>\S+?)(?P<params>(?:\s+[^;]+)?);\s*$")


class ClusterError(RuntimeError):
    """The cluster cannot start or stopped unexpectedly; the message says why."""


def find_deploy_dir() -> Path:
    """deploy/ of the working tree: the current directory's, else the source checkout's."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "deploy" / "start.sh").is_file() and (root / "deploy" / "nginx").is_dir():
            return root / "deploy"
    raise ClusterError(
        "deploy/start.sh and deploy/nginx/nginx.conf not found: run from the bgsvc checkout"
    )


def find_nginx() -> str:
    """Path of the nginx binary (Debian's package puts it in /usr/sbin)."""
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else "")
    if not path:
        raise ClusterError("nginx not found: install it with `apt-get install -y nginx`")
    return path


def upstream_servers(text: str) -> list[tuple[str, str]]:
    """(address, parameters) of each server line between the upstream markers."""
    lines = text.splitlines()
    start, end = _marker(lines, BEGIN_SERVERS), _marker(lines, END_SERVERS)
    servers = []
    for line in lines[start + 1 : end]:
        match = _SERVER.match(line)
        if match:
            servers.append((match["addr"], match["params"].strip()))
    return servers


def render_nginx_conf(
    text: str,
    servers: Sequence[str],
    *,
    listen: str | None = None,
    pid: str | None = None,
    error_log: str | None = None,
    access_log: str | None = None,
    temp_dir: str | None = None,
) -> str:
    """The production config with local upstreams, listen address and paths.

    Follows the rendering contract written at the top of deploy/nginx/nginx.conf: only
    the upstream server lines (keeping the template's max_fails/fail_timeout) and the
    lines tagged LISTEN, PID, ERROR_LOG, ACCESS_LOG and TEMP change (an argument left at
    None keeps that line); balancing, retries, limits and timeouts are the ones Compose
    ships. Relative paths resolve against nginx's prefix; the caller creates the folders.
    """
    template = upstream_servers(text)
    params = f" {template[0][1]}" if template and template[0][1] else ""
    lines = text.splitlines()
    start, end = _marker(lines, BEGIN_SERVERS), _marker(lines, END_SERVERS)
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    lines = [
        *lines[: start + 1],
        *(f"{indent}server {addr}{params};" for addr in servers),
        *lines[end:],
    ]
    values = {
        "LISTEN": listen,
        "PID": pid,
        "ERROR_LOG": error_log,
        "ACCESS_LOG": access_log,
        "TEMP": temp_dir,
    }
    out = []
    for line in lines:
        match = _TAGGED.match(line)
        value = values[match["tag"]] if match else None
        if match is None or value is None:
            out.append(line)
            continue
        ind, body, tag = match["indent"], match["body"], match["tag"]
        if tag == "LISTEN":
            out.append(f"{ind}listen {value};")
        elif tag == "PID":
            out.append(f"{ind}pid {value};")
        elif tag == "ERROR_LOG":
            out.append(f"{ind}error_log {value} warn;")
        elif tag == "ACCESS_LOG":
            log_format = body.rstrip(";").split()[-1]
            out.append(f"{ind}access_log {value} {log_format};")
        else:
            if NGINX_TEMP_ROOT not in body:
                raise ClusterError(f"# TEMP line without {NGINX_TEMP_ROOT}: {line!r}")
            out.append(f"{ind}{body.replace(NGINX_TEMP_ROOT, value)}")
    return "\n".join(out) + "\n"


def _marker(lines: list[str], marker: str) -> int:
    found = [i for i, line in enumerate(lines) if line.strip() == marker]
    if len(found) != 1:
        raise ClusterError(f"expected exactly one {marker!r} line in nginx.conf")
    return found[0]


def usable_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (so a node or nginx can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


@dataclass
class NodeSpec:
    """One node to start: its port and environment on top of the cluster's."""

    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"node-{self.port}"


@dataclass
class ClusterConfig:
    """What to start and where."""

    nodes: list[NodeSpec]
    host: str = DEFAULT_HOST
    listen_port: int = DEFAULT_LISTEN_PORT
    run_dir: Path = DEFAULT_RUN_DIR
    workers: int = 1
    threads: int = 0  # ORT intra-op threads per worker; 0: cores shared over all workers
    env: dict[str, str] = field(default_factory=dict)
    deploy_dir: Path | None = None

    @classmethod
    def local(
        cls, nodes: int = 3, base_port: int = DEFAULT_BASE_PORT, **kwargs: object
    ) -> ClusterConfig:
        """``nodes`` nodes on consecutive ports from ``base_port``."""
        specs = [NodeSpec(base_port + i) for i in range(nodes)]
        return cls(nodes=specs, **kwargs)  # type: ignore[arg-type]

    @property
    def threads_per_worker(self) -> int:
        """workers x threads over the whole cluster ≈ the machine's cores (at least 1)."""
        if self.threads:
            return self.threads
        return max(1, usable_cores() // (len(self.nodes) * self.workers))


class Node:
    """One service node: `deploy/start.sh` (gunicorn) in its own process group."""

    def __init__(self, spec: NodeSpec, config: ClusterConfig, deploy_dir: Path) -> None:
        self.spec = spec
        self.config = config
        self.deploy_dir = deploy_dir
        self.log_path = config.run_dir / "logs" / f"{spec.name}.log"
        self.metrics_dir = config.run_dir / "metrics" / spec.name
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The gunicorn arbiter's pid (also the node's process group id)."""
        if self.process is None:
            raise ClusterError(f"{self.name} is not started")
        return self.process.pid

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # gunicorn and bgsvc from the same environment as this interpreter.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            {
                "BGSVC_HOST": self.config.host,
                "BGSVC_PORT": str(self.port),
                "BGSVC_NODE_NAME": self.name,
                "BGSVC_WORKERS": str(self.config.workers),
                "BGSVC_INTRA_OP_THREADS": str(self.config.threads_per_worker),
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir.resolve()),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("WEB_CONCURRENCY", None)
        env.update(self.config.env)
        env.update(self.spec.env)
        return env

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(self.deploy_dir / "start.sh")],
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        return http_status(f"{self.url}/ready", timeout=1.0) == 200

    def terminate(self) -> None:
        """SIGTERM to the arbiter: graceful drain of its workers."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the whole node (arbiter and workers), as if its machine died."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()

    def wait(self, timeout: float) -> int | None:
        """Exit status, or None if still running after ``timeout`` seconds."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Nginx:
    """Debian's nginx with the rendered production config, in the foreground."""

    def __init__(self, config: ClusterConfig, deploy_dir: Path) -> None:
        self.config = config
        self.deploy_dir = deploy_dir
        self.prefix = (config.run_dir / "nginx").resolve()
        self.logs = (config.run_dir / "logs").resolve()
        self.conf_path = self.prefix / "nginx.conf"
        self.access_log = self.logs / "nginx-access.log"
        self.error_log = self.logs / "nginx-error.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._temp: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.listen_port}"

    def render(self) -> str:
        template = (self.deploy_dir / "nginx" / "nginx.conf").read_text()
        if os.geteuid() == 0:
            # As root, nginx's workers run as `nobody`, which must reach the temp folders
            # (request bodies above 1 MiB are spooled there): keep them under /tmp.
            self._temp = Path(tempfile.mkdtemp(prefix="bgsvc-nginx-"))
            self._temp.chmod(0o755)
            temp = self._temp
        else:
            temp = self.prefix / "temp"
            temp.mkdir(parents=True, exist_ok=True)
        return render_nginx_conf(
            template,
            [f"{self.config.host}:{n.port}" for n in self.config.nodes],
            listen=f"{self.config.host}:{self.config.listen_port}",
            pid=str(self.prefix / "nginx.pid"),
            error_log=str(self.error_log),
            access_log=str(self.access_log),
            temp_dir=str(temp),
        )

    def start(self) -> None:
        nginx = find_nginx()
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())
        command = [nginx, "-p", f"{self.prefix}/", "-e", str(self.error_log)]
        command += ["-c", str(self.conf_path)]
        check = subprocess.run([*command, "-t", "-q"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise ClusterError(f"nginx rejected {self.conf_path}: {check.stderr.strip()}")
        with self.error_log.open("ab") as errors:
            self.process = subprocess.Popen(
                [*command, "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float) -> None:
        """SIGQUIT: stop accepting, finish the requests being proxied, exit."""
        if self.process is None:
            return
        if self.alive():
            os.kill(self.process.pid, signal.SIGQUIT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None


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
