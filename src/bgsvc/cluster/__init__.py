"""A local fleet on loopback: N service nodes (gunicorn via deploy/start.sh) behind a real
nginx rendered from deploy/nginx/nginx.conf. ``bgsvc cluster up`` runs it in the
foreground; the tests drive :class:`Cluster` directly.

Each node is its own process group (so ``kill -9`` of a node takes its workers too, like
a lost machine) with its own Prometheus multiprocess directory; logs of every process
go to one folder (``.cluster/logs`` by default). With ``ClusterConfig.redis`` the fleet
also runs its own redis-server (job queue and records, shared cache) for its nodes.
"""

from bgsvc.cluster.common import ClusterError, find_deploy_dir, http_status, port_is_free
from bgsvc.cluster.fleet import Cluster, config_from_args, run_foreground
from bgsvc.cluster.nginx import (
    Nginx,
    backup_servers,
    find_nginx,
    render_nginx_conf,
    upstream_servers,
)
from bgsvc.cluster.nodes import ClusterConfig, Node, NodeSpec
from bgsvc.cluster.redisd import RedisServer

__all__ = [
    "Cluster",
    "ClusterConfig",
    "ClusterError",
    "Nginx",
    "Node",
    "NodeSpec",
    "RedisServer",
    "backup_servers",
    "config_from_args",
    "find_deploy_dir",
    "find_nginx",
    "http_status",
    "port_is_free",
    "render_nginx_conf",
    "run_foreground",
    "upstream_servers",
]
