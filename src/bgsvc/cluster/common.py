"""What the fleet pieces share: the error, where deploy/ is, ports and probes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO


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


class ChildProcess:
    """A child of the fleet (a node, its Redis) in a session of its own, so that a Ctrl-C
    at the terminal reaches only the supervisor, its output appended to ``log_path``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """Its pid, also its process group's id."""
        if self.process is None:
            raise ClusterError(f"{self.log_path.stem} is not started")
        return self.process.pid

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM: the child's own graceful stop."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to its whole process group (a node's workers too), as if its machine
        died."""
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
