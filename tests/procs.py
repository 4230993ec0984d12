"""Looking at real processes from tests: children of a pid, what a process has mapped."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from bgsvc.cluster import ClusterConfig, Node, NodeSpec, find_deploy_dir


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (gunicorn's workers of its arbiter)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces, so split after its ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def maps_library(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a shared object whose path contains ``name`` mapped."""
    return any(name in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


@contextlib.contextmanager
def running_node(
    run_dir: Path, env: dict[str, str], workers: int = 1, threads: int = 1
) -> Iterator[Node]:
    """One gunicorn node (deploy/start.sh) on a free loopback port, without nginx; drained
    and stopped on exit (killed if the drain does not end within 30 s)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    spec = NodeSpec(port)
    config = ClusterConfig(nodes=[spec], run_dir=run_dir, workers=workers, threads=threads, env=env)
    node = Node(spec, config, find_deploy_dir())
    node.start()
    try:
        yield node
    finally:
        node.terminate()
        if node.wait(30) is None:
            node.kill()
        node.close()
