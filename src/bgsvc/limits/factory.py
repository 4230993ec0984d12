"""The one place that picks the limits store from the settings."""

from __future__ import annotations

from bgsvc.config import Settings
from bgsvc.limits.base import Limits, RatePolicy
from bgsvc.metrics import Metrics

DB_NAME = "limits.sqlite3"


def build_limits(settings: Settings, metrics: Metrics) -> Limits:
    """Redis (shared by every node) when BGSVC_REDIS_URL is set, else the node's SQLite
    file under BGSVC_DATA_DIR (shared by its workers)."""
    auth_fail = RatePolicy.parse(settings.auth_fail_limit)

    def on_error(action: str) -> None:
        metrics.limits_errors.labels(action=action).inc()

    if settings.redis_url:
        # Imported only here: redis is an extra, and importing it costs start-up time.
        from bgsvc.limits.redis import RedisLimits

        return RedisLimits(
            settings.redis_url,
            auth_fail=auth_fail,
            socket_timeout_s=settings.redis_socket_timeout_s,
            fail_open=settings.rate_limit_fail_open,
            on_error=on_error,
        )
    from bgsvc.limits.sqlite import SqliteLimits

    return SqliteLimits(
        settings.data_dir / DB_NAME,
        auth_fail=auth_fail,
        fail_open=settings.rate_limit_fail_open,
        on_error=on_error,
    )
