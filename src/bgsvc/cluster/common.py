"""What the fleet pieces share: the error, where deploy/ is, ports and probes."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path


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
