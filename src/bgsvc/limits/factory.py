"""Builds the service's Limits from settings.

PLACEHOLDER for the limits implementation (in-process, or Redis with BGSVC_REDIS_URL):
until it lands, no limits (None), and bgsvc.auth enforces keys and scopes only.
"""

from __future__ import annotations

from bgsvc.config import Settings
from bgsvc.limits.api import Limits


def build_limits(settings: Settings) -> Limits | None:
    """The Limits for this process, or None for none."""
    del settings
    return None
