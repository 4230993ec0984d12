"""Dockerfile and Dockerfile.gpu, read by a small parser (no Docker engine here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bgsvc.config import Settings

from .conftest import REPO

DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for inst in self.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', inst.args):
                out[key] = value.strip('"')
        return out


def parse(text: str) -> list[Stage]:
    """Instructions grouped by stage; comments dropped, continuations joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            continue
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, line
            stages.append(Stage(match[1], match[2]))
            continue
        assert stages, f"{keyword} before FROM"
        stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def _stages(name: str) -> list[Stage]:
    return parse((REPO / name).read_text())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_is_built_in_a_builder_stage_and_shipped_from_a_runtime_stage(name: str) -> None:
    stages = _stages(name)
    assert [s.name for s in stages] == ["builder", "runtime"]
    builder, runtime = stages
    assert any("pip install" in r.args and "." in r.args for r in builder.all("RUN"))
    # OpenTelemetry ships in the image: OTEL_* variables alone turn tracing on.
    assert any("tracing" in r.args for r in builder.all("RUN") if "pip install" in r.args)
    # boto3 too: BGSVC_STORAGE_URL=s3://... (Compose's MinIO) works without a rebuild.
    installs = [r.args for r in builder.all("RUN") if "pip install" in r.args]
    assert any(re.search(r"\.\[[^\]]*\bs3\b", r) for r in installs)
    # Build tools stay in the builder.
    assert not any("pip install" in r.args for r in runtime.all("RUN"))
    assert not any("npm" in r.args for r in runtime.all("RUN"))
    copied = [c.args for c in runtime.all("COPY") if c.args.startswith("--from=builder")]
    assert any("/opt/venv" in c for c in copied)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_default_model_is_baked_in_at_build_time(name: str) -> None:
    builder, runtime = _stages(name)
    assert builder.env()["BGSVC_MODEL_DIR"] == "/opt/bgsvc/models"
    assert any(r.args == "bgsvc models fetch imgly-medium" for r in builder.all("RUN"))
    # node/npm for `npm pack` of the model package.
    assert any(re.search(r"\bnpm\b", r.args) for r in builder.all("RUN"))
    assert "--from=builder /opt/bgsvc/models /opt/bgsvc/models" in [
        c.args for c in runtime.all("COPY")
    ]
    assert runtime.env()["BGSVC_MODEL_DIR"] == "/opt/bgsvc/models"
    assert Settings.model_fields["default_model"].default == "imgly-medium"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_runs_as_a_numeric_non_root_user(name: str) -> None:
    runtime = _stages(name)[-1]
    users = runtime.all("USER")
    assert users, "no USER in the runtime stage"
    user = users[-1].args.split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric: runAsNonRoot can verify it
    assert any(f"--uid {user}" in r.args for r in runtime.all("RUN"))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_is_exec_form_so_signals_reach_gunicorn(name: str) -> None:
    runtime = _stages(name)[-1]
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["/app/deploy/start.sh"]
    assert not runtime.all("CMD")
    copies = [c.args for c in runtime.all("COPY")]
    assert "--chmod=0755 deploy/start.sh /app/deploy/start.sh" in copies
    assert "deploy/gunicorn.conf.py /app/deploy/gunicorn.conf.py" in copies


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_listens_on_all_interfaces_port_8000_with_metrics_dir(name: str) -> None:
    runtime = _stages(name)[-1]
    env = runtime.env()
    assert env["BGSVC_HOST"] == "0.0.0.0"
    assert env["BGSVC_PORT"] == "8000"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/bgsvc-metrics"
    assert [e.args for e in runtime.all("EXPOSE")] == ["8000"]
    known = {f"BGSVC_{n.upper()}" for n in Settings.model_fields}
    assert {k for k in env if k.startswith("BGSVC_")} <= known


def _healthcheck_cmd(name: str) -> list[str]:
    (health,) = _stages(name)[-1].all("HEALTHCHECK")
    options, _, cmd = health.args.partition("CMD ")
    assert "--start-period=" in options and "--timeout=" in options
    argv = json.loads(cmd)
    assert isinstance(argv, list) and argv[0] == "python"
    return argv


class _Stub:
    def __init__(self, status: int) -> None:
        self.paths: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stub() -> Iterator[Callable[[int], _Stub]]:
    made: list[_Stub] = []

    def make(status: int) -> _Stub:
        s = _Stub(status)
        made.append(s)
        return s

    yield make
    for s in made:
        s.server.shutdown()
        s.server.server_close()


def _run_healthcheck(argv: list[str], port: int) -> int:
    env = {**os.environ, "BGSVC_PORT": str(port)}
    return subprocess.run(
        [sys.executable, *argv[1:]], env=env, timeout=30, capture_output=True
    ).returncode


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck_passes_on_200_from_health_and_fails_otherwise(
    name: str, stub: Callable[[int], _Stub]
) -> None:
    argv = _healthcheck_cmd(name)
    ok = stub(200)
    assert _run_healthcheck(argv, ok.port) == 0
    assert ok.paths == ["/health"]
    assert _run_healthcheck(argv, stub(503).port) != 0
    closed = stub(200)
    closed.server.shutdown()
    closed.server.server_close()
    assert _run_healthcheck(argv, closed.port) != 0


def _dockerignore_excludes(rel: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a match on a
    parent directory covers everything below it."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(name: str) -> None:
    for stage in _stages(name):
        for copy in stage.all("COPY"):
            if copy.args.startswith("--from="):
                continue
            words = [w for w in copy.args.split() if not w.startswith("--")]
            for source in words[:-1]:
                path = REPO / source
                assert path.exists(), f"{name}: COPY source {source} is missing"
                assert not _dockerignore_excludes(source), f"{source} is in .dockerignore"
                if path.is_dir():
                    inner = next(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
                    assert not _dockerignore_excludes(str(inner.relative_to(REPO)))


def test_dockerignore_keeps_caches_and_git_out_of_the_context() -> None:
    for rel in [
        ".git/config",
        "tests/deploy/test_k8s.py",
        "src/bgsvc/__pycache__/x.pyc",
        ".venv/bin/python",
        "deploy/k8s/deployment.yaml",
    ]:
        assert _dockerignore_excludes(rel), rel
    assert not _dockerignore_excludes("src/bgsvc/config/__init__.py")


def test_gpu_image_uses_cuda_with_cudnn_and_only_the_gpu_onnxruntime() -> None:
    builder, runtime = _stages("Dockerfile.gpu")
    text = (REPO / "Dockerfile.gpu").read_text()
    base = re.search(r"ARG CUDA_IMAGE=(\S+)", text)
    assert base and base[1].startswith("nvidia/cuda:") and "cudnn-runtime" in base[1]
    assert builder.base == runtime.base == "${CUDA_IMAGE}"
    install = " && ".join(r.args for r in builder.all("RUN"))
    assert '".[gpu,tracing,s3,redis]"' in install
    # onnxruntime is an extra, so `gpu` brings the GPU wheel alone: nothing to uninstall.
    assert "uninstall" not in install and "--no-deps" not in install
    assert not re.search(r"\.\[[^\]]*\bcpu\b", install)
    # The build fails unless the installed wheel has its CUDA provider.
    assert install.index('".[gpu,tracing,s3,redis]"') < install.index("CUDAExecutionProvider")
    assert runtime.env()["BGSVC_PROVIDER"] == "cuda"


def test_cpu_image_installs_the_cpu_onnxruntime_extra() -> None:
    builder = _stages("Dockerfile")[0]
    installs = [r.args for r in builder.all("RUN") if "pip install" in r.args]
    assert any('".[cpu,tracing,s3,redis]"' in r for r in installs)
    assert not any("gpu" in r for r in installs)


def test_cpu_image_does_not_force_a_provider() -> None:
    runtime = _stages("Dockerfile")[-1]
    assert runtime.base.startswith("${PYTHON_IMAGE}")
    assert "python:3.11-slim" in (REPO / "Dockerfile").read_text()
    assert runtime.env().get("BGSVC_PROVIDER", "cpu") in {"cpu", "auto"}
