"""Start and stop `bgsvc serve` nodes (and optionally `bgsvc cluster up`) for a run."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from benchmarks.load import Target


def free_port() -> int:
    """A port the kernel just handed out on loopback (free at that moment)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def status_of(target: Target, path: str, timeout: float = 2.0) -> int | None:
    """HTTP status of GET ``path``, or None when nothing answers."""
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` from /proc, in KiB (0 when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Node:
    """One `bgsvc serve` process on a free loopback port, configured by environment."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.target = Target("127.0.0.1", free_port())
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {
            **os.environ,
            "BGSVC_HOST": self.target.host,
            "BGSVC_PORT": str(self.target.port),
            "BGSVC_LOG_LEVEL": "warning",
            "BGSVC_UI_ENABLED": "false",
            **env,
        }
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgsvc", "serve"],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        """The serving process (uvicorn runs in it)."""
        return self.proc.pid

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until /ready says 200; raises with the log's tail if the node dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited ({self.proc.returncode}): {self.tail()}")
            if status_of(self.target, "/ready") == 200:
                return
            if "model failed to load" in self.tail(40) or "model load failed" in self.tail(40):
                raise RuntimeError(f"node could not load its model: {self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"node not ready after {timeout:.0f}s: {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        """Last lines of the node's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it lingers."""
        stop_process(self.proc, timeout)
        self._log.close()


def cluster_available() -> str | None:
    """None when `bgsvc cluster up` exists and nginx is installed, else why not."""
    try:
        from bgsvc import cluster
    except ImportError:
        return "bgsvc.cluster is not part of this checkout"
    if not hasattr(cluster, "run_foreground"):
        return "bgsvc.cluster has no run_foreground"
    try:
        cluster.find_nginx()
    except Exception as exc:  # the cluster module's own error says what is missing
        return f"nginx not usable: {exc}"
    probe = subprocess.run(
        [sys.executable, "-m", "bgsvc", "cluster", "up", "--help"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return "`bgsvc cluster up` is not available"
    return None


class ClusterProc:
    """`bgsvc cluster up` in the foreground of a child process; stopped with SIGTERM."""

    def __init__(
        self,
        nodes: int,
        workers: int,
        threads: int,
        env: Mapping[str, str],
        run_dir: Path,
        redis_port: int | None = None,
    ) -> None:
        listen = free_port()
        base = free_port()
        # Node ports follow the base port; pick a base whose next ports are free too.
        for _ in range(20):
            if all(_port_free(base + i) for i in range(nodes)) and base + nodes < 65000:
                break
            base = free_port()
        self.target = Target("127.0.0.1", listen)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = run_dir / "cluster.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "bgsvc", "cluster", "up",
                "--nodes", str(nodes), "--base-port", str(base),
                "--listen-port", str(listen), "--workers", str(workers),
                "--threads", str(threads), "--run-dir", str(run_dir),
                *(["--redis-port", str(redis_port)] if redis_port else []),
            ],
            env={**os.environ, "BGSVC_LOG_LEVEL": "warning", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until the balancer answers /ready with 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cluster exited ({self.proc.returncode})")
            if status_of(self.target, "/ready") == 200:
                return
            time.sleep(0.5)
        raise RuntimeError("cluster not ready in time")

    def stop(self, timeout: float = 90.0) -> None:
        """SIGTERM to `bgsvc cluster up`, which drains and stops its nodes and nginx."""
        stop_process(self.proc, timeout)
        self._log.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
