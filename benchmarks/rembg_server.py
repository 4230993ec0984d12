"""rembg's own server (`rembg s`: FastAPI, ONNX Runtime on the CPU) on the same photos,
the same machine and the same weights as the service, for the "times rembg" row.

rembg's server pins its own FastAPI and needs Gradio, so it runs from a virtualenv of
its own under the bench's output folder (made once from PyPI, about 30 s here), at the
rembg version bgsvc itself installs. It serves the default model's float32 copy through
its ``dis_custom`` session (ISNet's recipe: 1024x1024, (x - 0.5) / 1), which is the
model rembg users run as ``isnet-general-use``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.images import BenchImage
from benchmarks.load import Target, closed_loop
from benchmarks.plan import say
from benchmarks.stats import summarise

BOUNDARY = "bgsvc-bench-boundary"


def _venv(out: Path) -> Path | str:
    """The python of rembg's virtualenv, or why there is none."""
    venv = out / "rembg-venv"
    python = venv / "bin" / "python"
    stamp = venv / f".rembg-{version('rembg')}"
    if stamp.is_file():
        return python
    say(f"rembg server: installing rembg[cli,cpu]=={version('rembg')} in {venv} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"rembg[cli,cpu]=={version('rembg')}"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install rembg's server ({exc})"
    stamp.touch()
    return python


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _multipart(image: bytes) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\ndis_custom\r\n',
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n",
    ]
    return "".join(parts).encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def _wait(port: int, proc: subprocess.Popen[bytes], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rembg s exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("rembg s did not listen in time")


def measure(images: list[BenchImage], model_file: Path, out: Path, requests: int) -> dict[str, Any]:
    """rembg's server at c=1, 2 and 4 on ``images`` (distinct JPEG uploads), PNG out."""
    python = _venv(out)
    if isinstance(python, str):
        say(f"rembg server skipped: {python}")
        return {"skipped": True, "note": python}
    port = _free_port()
    log = (out / "logs" / "rembg-server.log").open("wb")
    # rembg loads custom models only from its models directory (U2NET_HOME).
    env = {**os.environ, "U2NET_HOME": str(model_file.parent)}
    proc = subprocess.Popen(
        [str(python.parent / "rembg"), "s", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    extras = urllib.parse.quote(json.dumps({"model_path": str(model_file)}))
    path = f"/api/remove?extras={extras}"
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    bodies = [_multipart(im.data) for im in images]
    levels = []
    try:
        _wait(port, proc)
        target = Target("127.0.0.1", port)
        # The first request builds the session; the next ones warm it.
        closed_loop([target], bodies[:1], 1, 2, path=path, content_type=content_type)
        for c in (1, 2, 4):
            samples = closed_loop(
                [target], bodies, c, max(c * 2, requests), path=path, content_type=content_type
            )
            summary = summarise("rembg server (rembg s, ONNX Runtime CPU)", c, samples)
            say(
                f"rembg server c={c}: {summary.throughput:.3f} img/s, p50 {summary.p50:.2f}s, "
                f"ok {summary.ok}, errors {summary.errors}"
            )
            levels.append(summary.as_dict())
    except RuntimeError as exc:
        say(f"rembg server failed: {exc}")
        return {"skipped": True, "note": f"rembg server failed: {exc}"}
    finally:
        _stop(proc)
        log.close()
    best = max(levels, key=lambda lv: lv["throughput"])
    return {
        "rembg": version("rembg"),
        "model": f"dis_custom on {model_file.name}",
        "levels": levels,
        "throughput": best["throughput"],
    }
