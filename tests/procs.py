"""Looking at real processes from tests: children of a pid, what a process has mapped."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (gunicorn's workers of its arbiter)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces, so split after its ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def maps_library(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a shared object whose path contains ``name`` mapped."""
    return any(name in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
