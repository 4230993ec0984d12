"""The fleet's own Redis: Debian's ``redis-server`` on loopback, for the job queue and
records and the shared result cache of every node (BGSVC_REDIS_URL)."""

from __future__ import annotations

import importlib.util
import shutil
import socket
from collections.abc import Collection
from pathlib import Path

from bgsvc.cluster.common import ChildProcess, ClusterError

REDIS_NAME = "redis"


def find_redis_server() -> str:
    """Path of redis-server (Debian puts it in /usr/bin; look in the sbin dirs as well)."""
    for candidate in (
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        "/usr/sbin/redis-server",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    raise ClusterError(
        "redis-server not found: `make system-deps-cluster` installs it "
        "(or set BGSVC_REDIS_URL to a Redis of your own, or pass --no-redis)"
    )


def check_client() -> None:
    """The nodes run this interpreter's environment: without redis-py there, every node
    would fail at its start with BGSVC_REDIS_URL set."""
    if importlib.util.find_spec("redis") is None:
        raise ClusterError(
            "the fleet's Redis needs redis-py in this environment: pip install 'bgsvc[redis]' "
            "(or pass --no-redis)"
        )


def free_port(host: str, taken: Collection[int] = ()) -> int:
    """A port nobody listens on now, other than ``taken``: ports chosen for the nodes but
    not listened on yet are free to the kernel too, and it hands a just-closed one out
    again (a fleet test once drew its Redis port from its own nodes')."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


class RedisServer(ChildProcess):
    """One redis-server process, supervised like a node. SIGTERM makes it fsync the AOF
    and exit; its own session keeps a Ctrl-C at the terminal from stopping it before the
    nodes have drained (they still write job states on the way out)."""

    name = REDIS_NAME

    def __init__(self, host: str, port: int, run_dir: Path) -> None:
        super().__init__(run_dir / "logs" / "redis.log")
        self.host = host
        self.port = port
        self.data_dir = run_dir / "redis"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            # Loopback only and no password: protected mode refuses anyone else.
            "--protected-mode",
            "yes",
            "--dir",
            str(self.data_dir.resolve()),
            # Every write is in the append-only file, fsynced before Redis answers it:
            # a job accepted (202) is never lost when redis-server is killed or restarted.
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            # No RDB snapshots on top: the AOF is the one copy, and a fork of a big
            # dataset would stall the fleet.
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(self.command())

    def ready(self) -> bool:
        """Answers PING (RESP inline command) on its port."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
