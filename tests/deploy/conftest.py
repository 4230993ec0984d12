"""Shared helpers for the deploy-artefact tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# docs/operations.md, "Limits and memory": one worker with the default model, and the
# decodes it runs at once at the default BGSVC_MAX_PIXELS (benchmarks/decode_memory.py).
WORKER_BUDGET_BYTES = 4 * 2**30


def require_tool(name: str, package: str) -> str:
    """Path of a command-line tool; fail (not skip) when it is missing, since CI installs it."""
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        pytest.fail(f"`{name}` not found: install it with `apt-get install -y {package}`")
    return path


def load_yaml(path: Path) -> object:
    with path.open() as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list[object]:
    with path.open() as f:
        return list(yaml.safe_load_all(f))
