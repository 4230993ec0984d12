"""Render deploy/nginx/nginx.conf for nginx running outside Compose (tests' entry point).

The renderer itself lives in bgsvc.cluster, which the local cluster uses too.
"""

from __future__ import annotations

from pathlib import Path

from bgsvc.cluster import backup_servers, upstream_servers
from bgsvc.cluster import render_nginx_conf as render

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx" / "nginx.conf"

__all__ = ["NGINX_CONF", "REPO", "backup_servers", "render", "upstream_servers"]
