"""Debian's nginx in front of the local nodes, with the production config rendered for
loopback (see the rendering contract at the top of deploy/nginx/nginx.conf)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bgsvc.cluster.common import ClusterError
from bgsvc.cluster.nodes import ClusterConfig

BEGIN_SERVERS = "# BEGIN UPSTREAM SERVERS"
END_SERVERS = "# END UPSTREAM SERVERS"
BEGIN_BACKUPS = "# BEGIN BACKUP SERVERS"
END_BACKUPS = "# END BACKUP SERVERS"
NGINX_TEMP_ROOT = "/var/cache/nginx"
_TAGGED = re.compile(
    r"^(?P<indent>\s*)(?P<body>.*?)\s*#\s*(?P<tag>LISTEN|PID|ERROR_LOG|ACCESS_LOG|TEMP)\s*$"
)
_SERVER = re.compile(r"^\s*server\s+(?P<addr>\S+?)(?P<params>(?:\s+[^;]+)?);\s*$")


def find_nginx() -> str:
    """Path of the nginx binary (Debian's package puts it in /usr/sbin)."""
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else "")
    if not path:
        raise ClusterError("nginx not found: install it with `apt-get install -y nginx`")
    return path


def upstream_servers(text: str) -> list[tuple[str, str]]:
    """(address, parameters) of each server line between the upstream markers."""
    return _block_servers(text, BEGIN_SERVERS, END_SERVERS)


def backup_servers(text: str) -> list[tuple[str, str]]:
    """(address, parameters) of each server line between the backup markers."""
    return _block_servers(text, BEGIN_BACKUPS, END_BACKUPS)


def _block_servers(text: str, begin: str, end: str) -> list[tuple[str, str]]:
    lines = text.splitlines()
    first, last = _marker(lines, begin), _marker(lines, end)
    servers = []
    for line in lines[first + 1 : last]:
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
    the server lines of the upstream and backup blocks (one per node in each, keeping
    each block's template parameters) and the lines tagged LISTEN, PID, ERROR_LOG,
    ACCESS_LOG and TEMP change (an argument left at None keeps that line); balancing,
    retries, limits and timeouts are the ones Compose ships. Relative paths resolve
    against nginx's prefix; the caller creates the folders.
    """
    lines = text.splitlines()
    for begin, end in ((BEGIN_SERVERS, END_SERVERS), (BEGIN_BACKUPS, END_BACKUPS)):
        lines = _render_block(lines, begin, end, servers)
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


def _render_block(lines: list[str], begin: str, end: str, servers: Sequence[str]) -> list[str]:
    template = _block_servers("\n".join(lines), begin, end)
    params = f" {template[0][1]}" if template and template[0][1] else ""
    first, last = _marker(lines, begin), _marker(lines, end)
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    return [
        *lines[: first + 1],
        *(f"{indent}server {addr}{params};" for addr in servers),
        *lines[last:],
    ]


def _marker(lines: list[str], marker: str) -> int:
    found = [i for i, line in enumerate(lines) if line.strip() == marker]
    if len(found) != 1:
        raise ClusterError(f"expected exactly one {marker!r} line in nginx.conf")
    return found[0]


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
