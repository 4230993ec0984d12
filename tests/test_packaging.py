"""onnxruntime is an extra: its CPU and GPU wheels both own the `onnxruntime` package
directory, so no dependency path may bring the CPU one next to the GPU one."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_base_and_dev_dependencies_leave_the_runtime_to_the_cpu_or_gpu_extra() -> None:
    extras = PROJECT["optional-dependencies"]
    assert not _names(PROJECT["dependencies"]) & {"onnxruntime", "onnxruntime-gpu"}
    assert not _names(extras["dev"]) & {"onnxruntime", "onnxruntime-gpu"}
    # OpenVINO beside ONNX Runtime on the CPU; the GPU path stays on ONNX Runtime alone.
    assert _names(extras["cpu"]) == {"onnxruntime", "openvino"}
    assert _names(extras["gpu"]) == {"onnxruntime-gpu", "nvidia-ml-py"}


def test_make_installs_the_cpu_runtime_with_the_dev_tools() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -e '.[cpu,dev]'" in makefile
