"""What a job's folder in the local result store holds, as a reader sees it."""

from __future__ import annotations

import time
from pathlib import Path


def visible(folder: Path) -> list[str]:
    """The names a reader sees (not a writer's hidden temporary files), sorted."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def settled(folder: Path, names: list[str], timeout: float) -> list[str]:
    """The folder's visible names once they are ``names``, or as they are at ``timeout``:
    a job's upload (and a cut video's parts) go just after its record says it ended, not
    with it."""
    deadline = time.monotonic() + timeout
    while (found := visible(folder)) != names and time.monotonic() < deadline:
        time.sleep(0.02)
    return found
