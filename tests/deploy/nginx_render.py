"""Render deploy/nginx/nginx.conf for nginx running outside Compose.

Reference implementation of the rendering contract written at the top of the
config: the upstream server lines, listen, pid, log and temp paths change;
balancing, retries, limits and timeouts are kept verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx" / "nginx.conf"

BEGIN_SERVERS = "# BEGIN UPSTREAM SERVERS"
END_SERVERS = "# END UPSTREAM SERVERS"
TEMP_ROOT = "/var/cache/nginx"
_TAGGED = re.compile(
    r"^(?P<indent>\s*)(?P<body>.*?)\s*#\s*(?P<tag>LISTEN|PID|ERROR_LOG|ACCESS_LOG|TEMP)\s*$"
)
_SERVER = re.compile(r"^\s*server\s+(?P<addr>\S+?)(?P<params>(?:\s+[^;]+)?);\s*$")


def upstream_servers(text: str) -> list[tuple[str, str]]:
    """(address, parameters) of each server line between the markers."""
    lines = text.splitlines()
    start, end = lines.index(_find(lines, BEGIN_SERVERS)), lines.index(_find(lines, END_SERVERS))
    servers = []
    for line in lines[start + 1 : end]:
        match = _SERVER.match(line)
        if match:
            servers.append((match["addr"], match["params"].strip()))
    return servers


def render(
    text: str,
    servers: Sequence[str],
    *,
    listen: str | None = None,
    pid: str | None = None,
    error_log: str | None = None,
    access_log: str | None = None,
    temp_dir: str | None = None,
) -> str:
    """Return the config with the given upstream addresses, listen address and paths.

    An argument left at None keeps the Compose value of that line. Relative paths
    resolve against nginx's prefix (`nginx -p PREFIX`); nginx does not create the
    `logs/` folder nor the parent of the temp folders, the caller does. Server
    parameters (max_fails, fail_timeout) are copied from the first template server line.
    """
    lines = text.splitlines()
    start = lines.index(_find(lines, BEGIN_SERVERS))
    end = lines.index(_find(lines, END_SERVERS))
    template = upstream_servers(text)
    params = f" {template[0][1]}" if template and template[0][1] else ""
    indent = re.match(r"\s*", lines[start]).group(0)  # type: ignore[union-attr]
    server_lines = [f"{indent}server {addr}{params};" for addr in servers]
    lines = lines[: start + 1] + server_lines + lines[end:]

    out = []
    for line in lines:
        match = _TAGGED.match(line)
        if not match:
            out.append(line)
            continue
        ind, body, tag = match["indent"], match["body"], match["tag"]
        value = {
            "LISTEN": listen,
            "PID": pid,
            "ERROR_LOG": error_log,
            "ACCESS_LOG": access_log,
            "TEMP": temp_dir,
        }[tag]
        if value is None:
            out.append(line)
        elif tag == "LISTEN":
            out.append(f"{ind}listen {value};")
        elif tag == "PID":
            out.append(f"{ind}pid {value};")
        elif tag == "ERROR_LOG":
            out.append(f"{ind}error_log {value} warn;")
        elif tag == "ACCESS_LOG":
            fmt = body.rstrip(";").split()[-1]
            out.append(f"{ind}access_log {value} {fmt};")
        else:  # TEMP
            if TEMP_ROOT not in body:
                raise ValueError(f"# TEMP line without {TEMP_ROOT}: {line!r}")
            out.append(f"{ind}{body.replace(TEMP_ROOT, value)}")
    return "\n".join(out) + "\n"


def _find(lines: list[str], marker: str) -> str:
    found = [line for line in lines if line.strip() == marker]
    if len(found) != 1:
        raise ValueError(f"expected exactly one {marker!r} line, found {len(found)}")
    return found[0]
