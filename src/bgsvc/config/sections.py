"""The sections of the settings reference (docs/settings.md), in the order they appear
there (Settings lists its parts in that order), and the types several sections' fields
share. Each field names its own section, so the reference is derived from the fields
alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

SERVER = "Server and logging"
TRACING = "Tracing (OpenTelemetry)"
MODELS = "Models and inference engine"
CPU_RUNTIME = "Model preparation and CPU runtime"
GPU = "GPU (CUDA, TensorRT)"
ADMISSION = "Admission and image limits"
CLIENTS = "Slow and abusive clients"
OUTPUT = "Edges and output encoding"
CACHE = "Result cache and Redis"
JOBS = "Jobs and batches"
VIDEO = "Video jobs"
STORAGE = "Result storage"
OUTBOUND = "Outbound requests, webhooks and URL inputs"
ACCESS = "Authentication, rate limits and metrics"
EDGE = "TLS, the edge and browsers"


def in_section(title: str) -> dict[str, Any]:
    """A field's json_schema_extra: the reference section it is listed under."""
    return {"section": title}


def _empty_is_unset(value: object) -> object:
    return None if value == "" else value


# A directory that may be left unset. An empty value counts as unset: Path("") would
# otherwise be the current directory, wherever the process happens to start.
OptionalDir = Annotated[Path | None, BeforeValidator(_empty_is_unset)]
