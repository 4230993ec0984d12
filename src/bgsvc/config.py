"""Typed settings: the only module that reads the environment."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Provider = Literal["auto", "cpu", "cuda"]


class CustomModel(BaseModel):
    """A user-supplied ONNX file and the profile it needs (see inference.registry)."""

    path: Path
    profile: str = Field(
        default="isnet",
        description="Built-in profile to preprocess with: imgly, isnet, u2net or birefnet.",
    )
    input_size: int | None = Field(default=None, description="Overrides the profile's input size.")
    output_index: int | None = Field(default=None, description="Overrides the output to read.")


def _default_model_dir() -> Path:
    return Path.home() / ".cache" / "bgsvc" / "models"


class Settings(BaseSettings):
    """Every knob of the service; environment variables use the ``BGSVC_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="BGSVC_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address `bgsvc serve` binds to.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `bgsvc serve` binds to.")
    node_name: str = Field(
        default="",
        description="Name sent in X-Served-By; empty means hostname:port.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    model_dir: Path = Field(
        default_factory=_default_model_dir, description="Where fetched models are stored."
    )
    default_model: str = Field(default="imgly-medium", description="Model used when none is asked.")
    models: list[str] = Field(
        default_factory=list,
        description="Allow-list of models loaded at start and selectable per request; "
        "empty means only the default model.",
    )
    custom_models: dict[str, CustomModel] = Field(
        default_factory=dict,
        description='Extra ONNX files: {"name": {"path": "...", "profile": "isnet"}}.',
    )

    provider: Provider = Field(
        default="auto", description="ONNX Runtime provider: auto (CUDA if usable), cuda, cpu."
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ORT intra-op threads per session; 0 means every core."
    )
    inter_op_threads: int = Field(default=1, ge=1, description="ORT inter-op threads.")
    warmup: bool = Field(default=True, description="Run one inference before reporting ready.")

    max_concurrency: int = Field(default=1, ge=1, description="Inferences at once per process.")
    max_queue: int = Field(
        default=4, ge=0, description="Requests allowed to wait per process; beyond it, 429."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Per-request budget; beyond it, 504."
    )

    max_upload_bytes: int = Field(
        default=25 * 1024 * 1024, ge=1, description="Largest accepted request body (413)."
    )
    max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Largest source image in pixels, from its header (413).",
    )
    max_edge: int = Field(
        default=2048, ge=64, description="Longer edges are downscaled to this before processing."
    )
    allowed_formats: list[str] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF"],
        description="Pillow format names accepted as input (others: 415).",
    )

    png_compress_level: int = Field(default=1, ge=0, le=9, description="zlib level for PNG output.")
    jpeg_quality: int = Field(default=90, ge=1, le=100, description="Default JPEG quality.")
    webp_quality: int = Field(default=90, ge=1, le=100, description="Default WebP quality.")

    ui_enabled: bool = Field(default=True, description="Serve the web page at /.")

    workers: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("BGSVC_WORKERS", "WEB_CONCURRENCY", "workers"),
        description="gunicorn worker processes (deploy/gunicorn.conf.py); on CPU keep "
        "workers x intra_op_threads = cores.",
    )
    drain_seconds: float = Field(
        default=5.0,
        ge=0,
        description="After SIGTERM: seconds /ready answers 503 while the node still serves "
        "everything it receives, before it stops listening and finishes in-flight requests.",
    )

    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"),
        description="prometheus-client's multiprocess directory (set under gunicorn).",
    )

    @field_validator("allowed_formats")
    @classmethod
    def _upper_formats(cls, value: list[str]) -> list[str]:
        return [v.upper() for v in value]

    @model_validator(mode="after")
    def _default_in_allow_list(self) -> Settings:
        if not self.models:
            self.models = [self.default_model]
        elif self.default_model not in self.models:
            self.models = [self.default_model, *self.models]
        return self

    @property
    def effective_node_name(self) -> str:
        """The node name, defaulting to hostname:port."""
        return self.node_name or f"{socket.gethostname()}:{self.port}"

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
        request's budget, plus a margin. Past it gunicorn kills the worker."""
        return self.drain_seconds + self.request_timeout_s + 5.0


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
