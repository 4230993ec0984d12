"""The nodes of a local fleet: what to start (NodeSpec, ClusterConfig) and one running
node (Node: deploy/start.sh, i.e. gunicorn, in its own process group)."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bgsvc.cluster.common import ChildProcess, http_status, usable_cores

DEFAULT_HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 8001
DEFAULT_LISTEN_PORT = 8080
DEFAULT_TLS_PORT = 8443
DEFAULT_RUN_DIR = Path(".cluster")


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
    # Start a redis-server for the fleet (bgsvc.cluster.redisd) and give every node its
    # BGSVC_REDIS_URL; on redis_port, else on a free port.
    redis: bool = False
    redis_port: int | None = None
    # One BGSVC_DATA_DIR for every node (job results in bgsvc.storage's local directory
    # must be readable by whichever node is asked); ``env`` may still override it.
    data_dir: Path | None = None
    # HTTPS at nginx on tls_port (plain HTTP on listen_port then redirects there), with
    # tls_cert/tls_key, or a throwaway CA and certificate made in run_dir/tls.
    tls: bool = False
    tls_port: int = DEFAULT_TLS_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # nginx's per-address flood guard (requests/s, burst); a rate of 0 turns it off.
    edge_rate_per_s: int = 100
    edge_burst: int = 200

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


def balancer_address(host: str) -> str:
    """The network nginx's connections to nodes on ``host`` come from: ``host`` itself (a
    connection to a local address leaves from it), loopback for a wildcard or a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "127.0.0.1/32,::1/128"
    if ip.is_unspecified:
        return "127.0.0.1/32,::1/128"
    return str(ipaddress.ip_network(ip))


class Node(ChildProcess):
    """One service node: `deploy/start.sh` (gunicorn) in its own process group; its pid
    is the arbiter's."""

    def __init__(self, spec: NodeSpec, config: ClusterConfig, deploy_dir: Path) -> None:
        super().__init__(config.run_dir / "logs" / f"{spec.name}.log")
        self.spec = spec
        self.config = config
        self.deploy_dir = deploy_dir
        self.metrics_dir = config.run_dir / "metrics" / spec.name

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

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
        # The fleet's nginx is a proxy the nodes believe (X-Forwarded-For), so each client
        # has its own failed-authentication budget instead of all sharing nginx's; proxies
        # the environment names (one in front of nginx) stay trusted too.
        env["BGSVC_TRUSTED_PROXIES"] = ",".join(
            p for p in (balancer_address(self.config.host), env.get("BGSVC_TRUSTED_PROXIES")) if p
        )
        if self.config.data_dir is not None:
            env["BGSVC_DATA_DIR"] = str(self.config.data_dir.resolve())
        env.update(self.config.env)
        env.update(self.spec.env)
        return env

    def start(self) -> None:
        self._spawn([str(self.deploy_dir / "start.sh")], self.environment())

    def ready(self) -> bool:
        return http_status(f"{self.url}/ready", timeout=1.0) == 200
