"""Uvicorn server and gunicorn worker with a graceful drain on SIGTERM.

Stopping a node (``docker stop``, a Kubernetes pod deletion, gunicorn's arbiter passing
SIGTERM on to its workers, Ctrl-C on ``bgsvc serve``) goes through three steps:

1. **Drain window** (``BGSVC_DRAIN_SECONDS``, default 5 s): ``/ready`` answers 503 so
   balancers that poll it (Kubernetes readiness, Compose health, cloud load balancers)
   stop sending new work, while the node keeps listening and serves every request that
   still reaches it.
2. **Stop listening**: uvicorn closes the listening socket and idle keep-alive
   connections. A balancer with passive checks (nginx) now gets "connection refused",
   which is its cue to use the next node.
3. **Finish in-flight work**: uvicorn waits until every accepted request, queued or in
   inference, has had its response sent; then the app's lifespan shuts down and the
   process exits. gunicorn's ``graceful_timeout`` (drain window + request budget + margin)
   is the hard limit.

A second SIGTERM/SIGINT skips what is left of the drain window; a third SIGINT forces the
exit, as in plain uvicorn.
"""

from __future__ import annotations

import signal
import sys
import time
import warnings
from types import FrameType
from typing import Any, ClassVar

import uvicorn

from bgsvc.config import Settings, get_settings
from bgsvc.http_protocol import PROTOCOL, guarded
from bgsvc.state import begin_drain

try:  # gunicorn's uvicorn worker lives in its own package since uvicorn 0.30
    from uvicorn_worker import UvicornWorker as _UvicornWorker
except ImportError:  # pragma: no cover - older installs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from uvicorn.workers import UvicornWorker as _UvicornWorker

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Idle keep-alive connections stay open longer than nginx keeps its upstream connections
# (keepalive_timeout 60s in deploy/nginx/nginx.conf), so the balancer, not the node,
# closes them and never sends a request on a connection the node is closing. (A node at
# BGSVC_MAX_CONNECTIONS closes its longest idle ones, bgsvc.http_protocol; nginx's pool of
# 32 per worker never brings it there.)
KEEPALIVE_SECONDS = 75


def guard_connections(config: uvicorn.Config, settings: Settings) -> None:
    """What a client may hold before the app sees a request: the size of a request's head
    and the time it may take to arrive, and the connections open at once (see
    bgsvc.http_protocol, which applies all three to httptools). Both ways of serving
    (``bgsvc serve`` and gunicorn's workers) go through here."""
    config.http = guarded(settings.header_timeout_s)
    config.h11_max_incomplete_event_size = settings.max_header_bytes
    config.limit_concurrency = settings.max_connections or None


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT opens a drain window before the usual
    graceful shutdown."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._drain_signal: int | None = None
        self._drain_deadline: float | None = None
        self._drain_announced = False

    @property
    def draining(self) -> bool:
        """True from the first stop signal on."""
        return self._drain_signal is not None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler in the main thread, between two bytecodes of whatever
        # the event loop is doing: only record the time here. The app is told on the next
        # tick (on_tick), from the loop, where taking locks (metrics) is safe.
        if sig in DRAIN_SIGNALS and not self.draining and not self.should_exit:
            self._drain_signal = sig
            self._drain_deadline = time.monotonic() + self.drain_seconds
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_signal is not None:
            if not self._drain_announced:
                self._drain_announced = True
                begin_drain()
            if (
                not self.should_exit
                and self._drain_deadline is not None
                and time.monotonic() >= self._drain_deadline
            ):
                # uvicorn's own path from here: stop listening, close idle connections,
                # wait for in-flight requests, lifespan shutdown, re-raise the signal.
                super().handle_exit(self._drain_signal, None)
        return await super().on_tick(counter)


class DrainingUvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """gunicorn worker class (``worker_class`` in deploy/gunicorn.conf.py) that serves the
    app with :class:`DrainingServer`."""

    # Responses leave in one write of head and body (bgsvc.http_protocol).
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**_UvicornWorker.CONFIG_KWARGS, "http": PROTOCOL}

    async def _serve(self) -> None:
        from gunicorn.arbiter import Arbiter

        settings = get_settings()
        self.config.app = self.wsgi
        guard_connections(self.config, settings)
        server = DrainingServer(self.config, settings.drain_seconds)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def serve(app: Any, settings: Settings) -> None:
    """Run ``app`` in the foreground (``bgsvc serve``) on the settings' host and port, with
    the drain on SIGTERM/Ctrl-C."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        # X-Forwarded-For from BGSVC_TRUSTED_PROXIES only (empty: from nobody), as in
        # gunicorn's workers (deploy/gunicorn.conf.py) and the failed-auth budget.
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # The app writes the per-request record (bgsvc.log.log_request, BGSVC_ACCESS_LOG).
        access_log=False,
        timeout_keep_alive=KEEPALIVE_SECONDS,
        # After the drain window: what an accepted request may still take.
        timeout_graceful_shutdown=int(settings.in_flight_timeout_s),
    )
    guard_connections(config, settings)
    DrainingServer(config, settings.drain_seconds).run()
