from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from bgsvc.cli import main
from bgsvc.config import get_settings
from tests.conftest import TINY_SIZE, encode_image, subject_image


def tiny_env(tiny_model_path: Path, tmp_path: Path) -> dict[str, str]:
    return {
        "BGSVC_MODEL_DIR": str(tmp_path / "models"),
        "BGSVC_DEFAULT_MODEL": "tiny",
        "BGSVC_CUSTOM_MODELS": json.dumps(
            {"tiny": {"path": str(tiny_model_path), "profile": "imgly", "input_size": TINY_SIZE}}
        ),
        "BGSVC_INTRA_OP_THREADS": "1",
        "BGSVC_DRAIN_SECONDS": "0",
    }


@pytest.fixture
def tiny_environment(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in tiny_env(tiny_model_path, tmp_path).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_models_list_shows_default_and_state(
    tiny_environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "present, default" in out
    assert "imgly-medium" in out and "AGPL-3.0" in out


def test_remove_writes_cutouts_for_a_folder(tiny_environment: None, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        subject_image((60 + i, 40)).save(src / f"p{i}.jpg")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["remove", str(src), "-o", str(out), "-q"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["p0.png", "p1.png", "p2.png"]
    with Image.open(out / "p1.png") as written_image:
        assert written_image.size == (61, 40)


def test_remove_reports_bad_files_and_exits_nonzero(tiny_environment: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    assert main(["remove", str(bad), "-o", str(tmp_path / "o"), "-q"]) == 1


def test_missing_model_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "BGSVC_MODEL_DIR": str(tmp_path / "empty")}
    proc = subprocess.run(
        [sys.executable, "-m", "bgsvc", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "bgsvc models fetch imgly-medium" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_answers_and_stops_cleanly_on_ctrl_c(tiny_model_path: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **tiny_env(tiny_model_path, tmp_path), "BGSVC_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgsvc", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        req = urllib.request.Request(
            base + "/remove-background",
            data=encode_image(subject_image()),
            headers={"Content-Type": "image/png"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/png"
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    # 130 is the shell's code for "ended by Ctrl-C"; uvicorn re-raises the signal after its
    # graceful shutdown, so the lifespan ran to the end first.
    assert proc.returncode in (0, 130), output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("environ", "flags", "own_redis", "shared_data"),
    [
        ({}, [], True, True),
        ({"BGSVC_REDIS_URL": "redis://10.0.0.5:6379/0"}, [], False, True),
        ({}, ["--no-redis"], False, True),
        ({"BGSVC_DATA_DIR": "/srv/bgsvc"}, [], True, False),
    ],
    ids=["own", "given-url", "no-redis", "given-data-dir"],
)
def test_cluster_up_brings_its_own_redis_and_data_dir_only_where_none_is_given(
    environ: dict[str, str],
    flags: list[str],
    own_redis: bool,
    shared_data: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bgsvc.cluster

    for key in ("BGSVC_REDIS_URL", "BGSVC_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    seen = []
    monkeypatch.setattr(
        bgsvc.cluster, "run_foreground", lambda config, **_: seen.append(config) or 0
    )
    get_settings.cache_clear()
    try:
        assert main(["cluster", "up", "--run-dir", str(tmp_path / "run"), *flags]) == 0
    finally:
        get_settings.cache_clear()
    (config,) = seen
    assert config.redis is own_redis
    assert config.data_dir == ((tmp_path / "run" / "data") if shared_data else None)
