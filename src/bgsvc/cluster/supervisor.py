"""Restart nodes that die, as Compose's ``restart: unless-stopped`` or a Kubernetes
Deployment would: a background thread watches every node (and the fleet's redis-server)
and starts again any that
exited without being asked to, with a growing delay when one keeps crashing right after
its start (so a broken node does not spin). Planned operations (a rolling restart, the
final stop) hold a node so the supervisor leaves it alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

# A node that dies within this many seconds of its start counts as crash-looping and
# waits before its next start: 1, 2, 4 ... up to BACKOFF_MAX_S.
CRASH_LOOP_S = 10.0
BACKOFF_MAX_S = 30.0


class Supervised(Protocol):
    """What the supervisor needs of a process: a node (bgsvc.cluster.nodes.Node) or the
    fleet's Redis (bgsvc.cluster.redisd.RedisServer)."""

    @property
    def name(self) -> str: ...

    @property
    def process(self) -> object | None: ...

    def alive(self) -> bool: ...

    def ready(self) -> bool: ...

    def wait(self, timeout: float) -> int | None: ...

    def close(self) -> None: ...

    def start(self) -> None: ...


@dataclass
class Restart:
    """One unplanned death and what the supervisor did about it (monotonic times)."""

    node: str
    status: int | None
    died_at: float
    started_at: float
    ready_at: float | None = None

    @property
    def seconds_to_ready(self) -> float | None:
        """From noticing the death to the new node answering /ready 200."""
        return None if self.ready_at is None else self.ready_at - self.died_at


class Supervisor:
    """Watch ``nodes`` in a thread; ``say`` gets one line per event."""

    def __init__(
        self, nodes: Sequence[Supervised], say: Callable[[str], None], poll: float = 0.1
    ) -> None:
        self.nodes = list(nodes)
        self.say = say
        self.poll = poll
        self.restarts: list[Restart] = []
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = {n.name: time.monotonic() for n in self.nodes}
        self._crashes = {n.name: 0 for n in self.nodes}
        self._waiting_ready: dict[str, Restart] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bgsvc-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @contextlib.contextmanager
    def hold(self, node: Supervised) -> Iterator[None]:
        """Leave ``node`` alone while the caller stops or restarts it on purpose."""
        self.leave_alone(node)
        try:
            yield
        finally:
            self.watch_again(node)

    def leave_alone(self, node: Supervised) -> None:
        """From now on, until watch_again: ``node`` is stopped on purpose."""
        with self._lock:
            self._held.add(node.name)

    def watch_again(self, node: Supervised) -> None:
        with self._lock:
            self._held.discard(node.name)
            self._started_at[node.name] = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            for node in self.nodes:
                with self._lock:
                    if node.name in self._held:
                        continue
                    dead = not node.alive() and node.process is not None
                if dead:
                    self._restart(node)
                self._check_ready(node)

    def _restart(self, node: Supervised) -> None:
        died = time.monotonic()
        status = node.wait(0)
        if died - self._started_at[node.name] < CRASH_LOOP_S:
            self._crashes[node.name] += 1
        else:
            self._crashes[node.name] = 0
        delay = min(BACKOFF_MAX_S, 2.0 ** (self._crashes[node.name] - 1))
        delay = delay if self._crashes[node.name] else 0.0
        self.say(
            f"{node.name} exited (status {status}); restarting"
            + (f" in {delay:.0f}s (crash loop)" if delay else "")
        )
        if delay and self._stop.wait(delay):
            return
        node.close()
        node.start()
        now = time.monotonic()
        self._started_at[node.name] = now
        restart = Restart(node.name, status, died, now)
        self.restarts.append(restart)
        self._waiting_ready[node.name] = restart

    def _check_ready(self, node: Supervised) -> None:
        restart = self._waiting_ready.get(node.name)
        if restart is None or not node.alive() or not node.ready():
            return
        restart.ready_at = time.monotonic()
        del self._waiting_ready[node.name]
        self.say(f"{node.name} ready again after {restart.seconds_to_ready:.1f}s")
