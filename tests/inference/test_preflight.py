"""Start-up checks in a child interpreter, so gunicorn's arbiter never loads onnxruntime
(a forked worker of a process that had it loaded aborts when it exits)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bgsvc.cluster import Node
from bgsvc.inference.preflight import check_in_child
from tests.models import TINY_SIZE, build_tiny_model
from tests.procs import children, maps_library, running_node


def custom(path: Path) -> str:
    return json.dumps({"tiny": {"path": str(path), "profile": "imgly", "input_size": TINY_SIZE}})


def test_checks_in_a_child_pass_for_a_present_model_and_name_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_tiny_model(tmp_path / "tiny.onnx")
    monkeypatch.setenv("BGSVC_CUSTOM_MODELS", custom(model))
    monkeypatch.setenv("BGSVC_DEFAULT_MODEL", "tiny")
    monkeypatch.setenv("BGSVC_MODEL_DIR", str(tmp_path / "model-dir"))
    assert check_in_child() is None

    model.unlink()
    error = check_in_child()
    assert error is not None and "tiny" in error and "\n" not in error


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    env = {
        "BGSVC_CUSTOM_MODELS": custom(build_tiny_model(tmp_path / "tiny.onnx")),
        "BGSVC_DEFAULT_MODEL": "tiny",
        "BGSVC_MODEL_DIR": str(tmp_path / "model-dir"),
        "BGSVC_DRAIN_SECONDS": "0.2",
    }
    with running_node(tmp_path / "run", env, workers=2) as started:
        yield started


def test_the_arbiter_never_loads_onnxruntime_and_its_workers_exit_cleanly(node: Node) -> None:
    def both_workers_loaded() -> bool:
        workers = children(node.pid)
        return len(workers) == 2 and all(maps_library(w, "onnxruntime") for w in workers)

    deadline = time.monotonic() + 60
    while not (both_workers_loaded() and node.ready()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert both_workers_loaded()
    assert not maps_library(node.pid, "onnxruntime")
    assert httpx.get(f"{node.url}/health", timeout=5).status_code == 200

    node.terminate()
    assert node.wait(30) == 0
    log = node.log_path.read_text()
    assert "terminate called" not in log and "SIGABRT" not in log
