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
from dataclasses import dataclass
from pathlib import Path

from bgsvc.cluster.common import ClusterError
from bgsvc.cluster.nodes import ClusterConfig
from bgsvc.cluster.tls import TlsFiles, make_run_certificates

BEGIN_SERVERS = "# BEGIN UPSTREAM SERVERS"
END_SERVERS = "# END UPSTREAM SERVERS"
BEGIN_BACKUPS = "# BEGIN BACKUP SERVERS"
END_BACKUPS = "# END BACKUP SERVERS"
NGINX_TEMP_ROOT = "/var/cache/nginx"
_TAGS = (
    "LISTEN_TLS|LISTEN|TLS_CERT|TLS_KEY|TLS|REDIRECT|FLOOD_ZONE|FLOOD_GUARD"
    "|PID|ERROR_LOG|ACCESS_LOG|TEMP"
)
_TAGGED = re.compile(rf"^(?P<indent>\s*)(?P<body>.*?)\s*#\s*(?P<tag>{_TAGS})\s*$")
# Dropped with TLS off: plain HTTP then serves every route itself.
_TLS_ONLY = frozenset({"LISTEN_TLS", "TLS_CERT", "TLS_KEY", "TLS", "REDIRECT"})
HTTPS_PORT = 443


@dataclass(frozen=True)
class TlsListen:
    """HTTPS at the balancer: certificate chain and key (PEM paths), and where to listen
    (None keeps the template's port 443). Plain HTTP then redirects to ``https_port``."""

    cert: str
    key: str
    listen: str | None = None
    https_port: int = HTTPS_PORT


@dataclass(frozen=True)
class FloodGuard:
    """The per-address limit_req: sustained requests per second and the burst above it;
    a rate of 0 turns the guard off."""

    rate_per_s: int
    burst: int


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
    tls: TlsListen | None = None,
    flood: FloodGuard | None = None,
) -> str:
    """The production config with local upstreams, listen address and paths.

    ``tls`` None drops the HTTPS listener, its settings and the redirect (plain HTTP
    only); ``flood`` None keeps the template's guard.

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
        if match is not None and match["tag"] in _TLS_ONLY | {"FLOOD_ZONE", "FLOOD_GUARD"}:
            out.extend(_edge_line(line, match, tls, flood))
            continue
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


def _edge_line(
    line: str, match: re.Match[str], tls: TlsListen | None, flood: FloodGuard | None
) -> list[str]:
    ind, body, tag = match["indent"], match["body"], match["tag"]
    if tag in _TLS_ONLY:
        if tls is None:
            return []
        if tag == "LISTEN_TLS" and tls.listen is not None:
            return [f"{ind}listen {tls.listen} ssl http2;"]
        if tag == "TLS_CERT":
            return [f"{ind}ssl_certificate {tls.cert};"]
        if tag == "TLS_KEY":
            return [f"{ind}ssl_certificate_key {tls.key};"]
        if tag == "REDIRECT" and tls.https_port != HTTPS_PORT:
            return [f"{ind}{body.replace('https://$host', f'https://$host:{tls.https_port}')}"]
        return [line]
    if flood is None:
        return [line]
    if flood.rate_per_s == 0:
        return []
    if tag == "FLOOD_ZONE":
        return [ind + re.sub(r"rate=\d+r/s", f"rate={flood.rate_per_s}r/s", body)]
    return [ind + re.sub(r"burst=\d+", f"burst={flood.burst}", body)]


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
        self.tls_files: TlsFiles | None = None

    @property
    def url(self) -> str:
        """Where clients go: HTTPS when TLS is on, else plain HTTP."""
        if self.config.tls:
            return f"https://{self.config.host}:{self.config.tls_port}"
        return self.plain_url

    @property
    def plain_url(self) -> str:
        """Plain HTTP (only /health answers there, the rest redirects, when TLS is on)."""
        return f"http://{self.config.host}:{self.config.listen_port}"

    def prepare_tls(self) -> TlsFiles | None:
        """The certificate and key nginx serves: the configured ones, else a throwaway CA
        and certificate for this run in run_dir/tls."""
        config = self.config
        if not config.tls:
            self.tls_files = None
        elif config.tls_cert is not None and config.tls_key is not None:
            self.tls_files = TlsFiles(config.tls_cert.resolve(), config.tls_key.resolve())
        else:
            hosts = tuple(dict.fromkeys((config.host, "localhost", "127.0.0.1")))
            self.tls_files = make_run_certificates((config.run_dir / "tls").resolve(), hosts)
        return self.tls_files

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
            tls=self._tls_listen(),
            flood=FloodGuard(self.config.edge_rate_per_s, self.config.edge_burst),
        )

    def _tls_listen(self) -> TlsListen | None:
        files = self.tls_files
        if files is None:
            return None
        port = self.config.tls_port
        listen = f"{self.config.host}:{port}"
        return TlsListen(cert=str(files.cert), key=str(files.key), listen=listen, https_port=port)

    def start(self) -> None:
        nginx = find_nginx()
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.prepare_tls()
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
