"""Per-process state shared by the lifespan, the middleware and the routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from bgsvc.config import Settings
from bgsvc.inference.scheduler import Scheduler
from bgsvc.metrics import Metrics
from bgsvc.service import Predictor, RemovalService, Remover


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

    def __post_init__(self) -> None:
        self.remover = Remover(self.engines, self.settings)
        self.service = RemovalService(self.remover, self.scheduler, self.metrics, self.settings)

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /ready and for admission."""
        if self.load_error is not None:
            return False, f"model failed to load: {self.load_error}"
        if self.draining:
            return False, "draining"
        if not self.ready:
            return False, "loading model"
        return True, "ready"
