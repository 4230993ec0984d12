"""Typed settings: the only package that reads the environment.

Each setting is described once, in the module of its part of the service (``server``,
``engine``, ``admission``, ``output``, ``jobs``, ``access``); ``Settings`` is all of them,
read from the environment. ``bgsvc settings --markdown`` renders the fields (grouped by the
section each names) as docs/settings.md.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

from bgsvc.config.access import AccessSettings, EdgeSettings, OutboundSettings
from bgsvc.config.admission import AdmissionSettings, ClientSettings
from bgsvc.config.engine import CpuRuntimeSettings, CustomModel, GpuSettings, ModelSettings
from bgsvc.config.jobs import JobSettings, StorageSettings, VideoSettings
from bgsvc.config.output import CacheSettings, OutputSettings
from bgsvc.config.server import ServerSettings, TracingSettings

__all__ = ["CustomModel", "Settings", "get_settings", "media_child_environ"]


# The parts last to first: pydantic collects fields base class first, so Settings lists them
# (bgsvc settings, the reference) from the server's to the edge's.
class Settings(
    EdgeSettings,
    AccessSettings,
    OutboundSettings,
    StorageSettings,
    VideoSettings,
    JobSettings,
    CacheSettings,
    OutputSettings,
    ClientSettings,
    AdmissionSettings,
    GpuSettings,
    CpuRuntimeSettings,
    ModelSettings,
    TracingSettings,
    ServerSettings,
    BaseSettings,
):
    """Every knob of the service; environment variables use the ``BGSVC_`` prefix."""

    # populate_by_name: code passes settings by field name (Settings(workers=2)); were the
    # name one of the aliases instead, the environment would be searched for it too, and
    # a bare WORKERS variable would set the worker count.
    model_config = SettingsConfigDict(env_prefix="BGSVC_", extra="ignore", populate_by_name=True)

    @property
    def effective_intra_op_threads(self) -> int:
        """Intra-op thread count; 0 means the usable cores shared out over the workers, so
        workers x threads = cores (one thread per core, no oversubscription)."""
        if self.intra_op_threads:
            return self.intra_op_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        return max(1, cores // self.workers)

    @property
    def graceful_timeout_s(self) -> float:
        """How long a stopping process may take: the drain window, then the longest
        request (its body's deadline, then its budget), plus a margin. Past it gunicorn
        kills the worker."""
        return self.drain_seconds + self.in_flight_timeout_s

    @property
    def in_flight_timeout_s(self) -> float:
        """How long an accepted request may still take: its body's deadline, then its
        budget, plus a margin (uvicorn's graceful shutdown, after the drain window)."""
        return self.body_read_timeout_s + self.request_timeout_s + 5.0


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()


# What a child process that parses untrusted media keeps of the server's environment:
# where Python, its libraries and its packages are (a user install's included), and the
# locale. Not the rest, which holds the server's secrets (API keys, Redis, S3 and webhook
# credentials) for any code a decoder exploit runs there to read.
_MEDIA_CHILD_KEEPS = (
    *("PATH", "LD_LIBRARY_PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE"),
    *("PYTHONHOME", "PYTHONPATH", "PYTHONUSERBASE", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV"),
)
# The child uses numpy for buffers only: a BLAS thread pool per core would cost each start
# a tenth of a second of CPU, beside a forward pass that already has every core.
_MEDIA_CHILD_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def media_child_environ() -> dict[str, str]:
    """The environment a media child is started with."""
    kept = {name: os.environ[name] for name in _MEDIA_CHILD_KEEPS if name in os.environ}
    return kept | dict.fromkeys(_MEDIA_CHILD_THREADS, "1")
