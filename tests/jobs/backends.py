"""Both job stores behind one interface, for tests that play the same scenario on each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bgsvc.jobs.base import JobStore


@dataclass
class Backend:
    """Opens stores on one backend: each a node (Redis) or a process of the node (SQLite)."""

    kind: str
    opener: Callable[[float], JobStore]
    opened: list[JobStore] = field(default_factory=list)

    def open(self, heartbeat_timeout_s: float = 5.0) -> JobStore:
        store = self.opener(heartbeat_timeout_s)
        self.opened.append(store)
        return store

    def play(self, scenario: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await scenario()
            finally:
                for store in self.opened:
                    await store.close()

        asyncio.run(run())
