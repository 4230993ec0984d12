"""Per-process state shared by the lifespan, the middleware and the routes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from bgsvc.config import Settings
from bgsvc.inference.base import EngineChoice
from bgsvc.inference.scheduler import Scheduler
from bgsvc.metrics import Metrics
from bgsvc.pipeline import Predictor, Remover
from bgsvc.service import RemovalService

log = logging.getLogger(__name__)

# Signals are per process, so the drain trigger is too: the server (bgsvc.server) calls
# begin_drain() once it has taken SIGTERM; each app's lifespan registers its state here.
_drain_hooks: list[Callable[[], None]] = []


def on_drain(hook: Callable[[], None]) -> Callable[[], None]:
    """Call ``hook`` when this process starts draining; returns the unregister function."""
    _drain_hooks.append(hook)
    return lambda: _drain_hooks.remove(hook) if hook in _drain_hooks else None


def begin_drain() -> None:
    """Mark every app in this process as draining (called from the event loop, not from
    the signal handler itself, so no lock can be held across it)."""
    for hook in list(_drain_hooks):
        hook()


@dataclass
class AppState:
    """What one worker process holds: its settings, models, scheduler and readiness."""

    settings: Settings
    metrics: Metrics
    scheduler: Scheduler
    engines: dict[str, Predictor] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    stuck: bool = False

    def __post_init__(self) -> None:
        self.remover = Remover(self.engines, self.settings)
        self.service = RemovalService(self.remover, self.scheduler, self.metrics, self.settings)

    def start_draining(self) -> None:
        """SIGTERM taken: /ready turns 503 so balancers stop sending new work; requests
        that still arrive are served until the server stops listening."""
        if not self.draining:
            self.draining = True
            self.metrics.ready.set(0)
            log.info("draining: /ready now answers 503; serving until the listener closes")

    def mark_stuck(self) -> None:
        """The watchdog tripped: not ready and no new work, for good (the process is
        about to be replaced); requests waiting for the stuck slot are refused too."""
        self.stuck = True
        self.metrics.ready.set(0)
        self.metrics.watchdog_trips.inc()
        self.scheduler.refuse_queued()

    def engine_choices(self) -> dict[str, dict[str, str]]:
        """Per loaded model: the engine, precision and device it runs on, and why."""
        choices: dict[str, dict[str, str]] = {}
        for name, engine in self.engines.items():
            choice = getattr(engine, "choice", None)
            if isinstance(choice, EngineChoice):
                choices[name] = choice.as_dict()
        return choices

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /ready: not ready while loading, failed, stuck or draining."""
        if self.stuck:
            return False, "stuck inference"
        if self.draining:
            return False, "draining"
        return self.serviceable()

    def serviceable(self) -> tuple[bool, str]:
        """(ok, reason) for admission. A draining node still serves what reaches it: a
        request accepted during the drain window is finished, never refused; a stuck
        one refuses, since its inference slot may never free up."""
        if self.stuck:
            return False, "stuck inference"
        if self.load_error is not None:
            return False, f"model failed to load: {self.load_error}"
        if not self.ready:
            return False, "loading model"
        return True, "ready"
