"""Key names as metric labels, with bounded cardinality."""

from __future__ import annotations

import threading

OTHER = "other"


class KeyLabels:
    """The first ``limit`` distinct key names seen by this process label themselves; later
    ones share "other", so a fleet of thousands of keys cannot blow up the series count."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str:
        with self._lock:
            if name in self._seen:
                return name
            if len(self._seen) < self.limit:
                self._seen.add(name)
                return name
        return OTHER
