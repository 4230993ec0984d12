"""A real `bgsvc serve` killed with SIGKILL in the middle of a job: after the restart the
job runs again and ends succeeded once, with one visible result object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import encode_image
from tests.models import HANG_THRESHOLD_GREY, TINY_SIZE, build_hang_model
from tests.redis_server import RedisServer, redis_server  # noqa: F401
from tests.test_cli import free_port

# About a second of the hang model's spin on one thread: long enough to be killed in.
SLOW_GREY = HANG_THRESHOLD_GREY + 19


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@contextmanager
def serving(
    data_dir: Path, model: Path, log: Path, extra: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **os.environ,
        "BGSVC_PORT": str(port),
        "BGSVC_DATA_DIR": str(data_dir),
        "BGSVC_MODEL_DIR": str(data_dir.parent / "models"),
        "BGSVC_CUSTOM_MODELS": json.dumps(
            {"slow": {"path": str(model), "profile": "imgly", "input_size": TINY_SIZE}}
        ),
        "BGSVC_DEFAULT_MODEL": "slow",
        # The hang model's spin is sized on ONNX Runtime; the engine choice would time
        # its microsecond forward passes and could land on either engine.
        "BGSVC_ENGINE": "onnxruntime",
        "BGSVC_INTRA_OP_THREADS": "1",
        "BGSVC_WARMUP": "false",
        "BGSVC_DRAIN_SECONDS": "0",
        "BGSVC_LOG_LEVEL": "warning",
        **(extra or {}),
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgsvc", "serve"], env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while _get(base + "/ready")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _status(base: str, job_id: str) -> dict[str, Any]:
    code, body = _get(f"{base}/jobs/{job_id}")
    assert code == 200, body
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def _wait(base: str, job_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (body := _status(base, job_id))["status"] != status:
        assert time.monotonic() < deadline, body
        time.sleep(0.02)
    return body


def test_a_job_whose_process_is_killed_finishes_once_after_the_restart(tmp_path: Path) -> None:
    model = build_hang_model(tmp_path / "hang.onnx")
    data_dir = tmp_path / "data"
    log = tmp_path / "serve.log"
    image = encode_image(Image.new("RGB", (48, 32), (SLOW_GREY,) * 3))

    with serving(data_dir, model, log) as (base, proc):
        request = urllib.request.Request(
            base + "/jobs", data=image, headers={"Content-Type": "image/png"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            job = json.loads(response.read())
        _wait(base, job["id"], "running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    with serving(data_dir, model, log) as (base, _):
        done = _wait(base, job["id"], "succeeded")
        assert done["attempts"] == 2
        code, body = _get(base + done["result_url"])
        assert code == 200 and body.startswith(b"\x89PNG")
        _, metrics = _get(base + "/metrics")
        assert b'bgsvc_jobs_total{outcome="succeeded"} 1.0' in metrics

    folder = data_dir / "results" / "jobs" / job["id"]
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == ["result.png"]


@pytest.mark.redis
def test_with_redis_a_killed_process_s_job_is_taken_over_by_a_live_one_once(
    tmp_path: Path,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    model = build_hang_model(tmp_path / "hang.onnx")
    data_dir = tmp_path / "data"
    image = encode_image(Image.new("RGB", (48, 32), (SLOW_GREY,) * 3))
    shared = {"BGSVC_REDIS_URL": redis_server.url, "BGSVC_JOB_REDELIVER_S": "2"}

    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    with (
        serving(data_dir, model, a_log, shared) as (first, a),
        serving(data_dir, model, b_log, shared) as (second, b),
    ):
        request = urllib.request.Request(
            first + "/jobs", data=image, headers={"Content-Type": "image/png"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            job = json.loads(response.read())
        _wait(first, job["id"], "running")
        # Either process may have claimed it: the record names the runner (host:pid:...).
        with redis_server.client() as probe:
            owner = probe.hget(f"bgsvc:jobs:job:{job['id']}", "owner")
        assert owner is not None
        pid = int(owner.decode().split(":")[1])
        victim, survivor = (a, second) if pid == a.pid else (b, first)
        assert victim.pid == pid
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        done = _wait(survivor, job["id"], "succeeded", timeout=30)
        assert done["attempts"] == 2
        code, body = _get(survivor + done["result_url"])
        assert code == 200 and body.startswith(b"\x89PNG")
        _, metrics = _get(survivor + "/metrics")
        assert b'bgsvc_jobs_total{outcome="succeeded"} 1.0' in metrics
        time.sleep(3)  # one more redelivery period: nothing runs it a third time
        assert _status(survivor, job["id"])["attempts"] == 2

    folder = data_dir / "results" / "jobs" / job["id"]
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert visible == ["result.png"]
