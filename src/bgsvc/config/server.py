"""Settings of the server process: where it listens, what it logs, where its traces go."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator

from bgsvc.config.sections import SERVER, TRACING, in_section


class ServerSettings(BaseModel):
    """Where the server listens, its workers, and what it logs."""

    host: str = Field(
        default="127.0.0.1",
        description="Address `bgsvc serve` binds to.",
        json_schema_extra=in_section(SERVER),
    )
    port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="Port `bgsvc serve` binds to.",
        json_schema_extra=in_section(SERVER),
    )
    node_name: str = Field(
        default="",
        description="Name sent in X-Served-By; empty means hostname:port.",
        json_schema_extra=in_section(SERVER),
    )
    workers: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("BGSVC_WORKERS", "WEB_CONCURRENCY"),
        description="gunicorn worker processes (deploy/gunicorn.conf.py); on the CPU keep "
        "workers x intra_op_threads = cores. Unset on a CUDA host: 2 per GPU (docs/gpu.md).",
        json_schema_extra=in_section(SERVER),
    )
    drain_seconds: float = Field(
        default=5.0,
        ge=0,
        description="After SIGTERM: seconds /ready answers 503 while the node still serves "
        "everything it receives, before it stops listening and finishes in-flight requests.",
        json_schema_extra=in_section(SERVER),
    )
    ui_enabled: bool = Field(
        default=True, description="Serve the web page at /.", json_schema_extra=in_section(SERVER)
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Lowest level logged, for every logger of the process (httpx and "
        "httpcore stay at warning or above: their lines carry full URLs).",
        json_schema_extra=in_section(SERVER),
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text (one readable line) or json (one JSON object per line, for "
        "Loki/ELK), for every line of the process: bgsvc, uvicorn and gunicorn.",
        json_schema_extra=in_section(SERVER),
    )
    access_log: bool = Field(
        default=True,
        description="One record per request (route, status, duration in seconds) at info; "
        "/health, /ready and /metrics at debug.",
        json_schema_extra=in_section(SERVER),
    )

    @property
    def effective_node_name(self) -> str:
        """The node name, defaulting to hostname:port."""
        return self.node_name or f"{socket.gethostname()}:{self.port}"


class TracingSettings(BaseModel):
    """OpenTelemetry tracing: on when an exporter or an OTLP endpoint is named."""

    # Tracing is on when a trace exporter or an OTLP endpoint is named; the SDK itself
    # reads the other OTEL_* variables (headers, sampler, batch sizes).
    otel_traces_exporter: str = Field(
        default="",
        validation_alias=AliasChoices("OTEL_TRACES_EXPORTER", "otel_traces_exporter"),
        description="otlp, console or none (comma-separated); empty means otlp when an "
        "OTLP endpoint is set, else tracing off.",
        json_schema_extra=in_section(TRACING),
    )

    @field_validator("otel_traces_exporter")
    @classmethod
    def _known_trace_exporters(cls, value: str) -> str:
        unknown = {e.strip().lower() for e in value.split(",") if e.strip()} - {
            "otlp",
            "console",
            "none",
        }
        if unknown:
            raise ValueError(f"OTEL_TRACES_EXPORTER {sorted(unknown)}: use otlp, console, none")
        return value

    otel_exporter_otlp_endpoint: str = Field(
        default="",
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_exporter_otlp_endpoint"),
        description="OTLP/HTTP base URL (e.g. http://collector:4318); spans go to /v1/traces.",
        json_schema_extra=in_section(TRACING),
    )
    otel_exporter_otlp_traces_endpoint: str = Field(
        default="",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "otel_exporter_otlp_traces_endpoint"
        ),
        description="Full OTLP/HTTP URL for spans; overrides the base endpoint.",
        json_schema_extra=in_section(TRACING),
    )
    otel_service_name: str = Field(
        default="bgsvc",
        validation_alias=AliasChoices("OTEL_SERVICE_NAME", "otel_service_name"),
        description="service.name of the spans.",
        json_schema_extra=in_section(TRACING),
    )
    otel_sdk_disabled: bool = Field(
        default=False,
        validation_alias=AliasChoices("OTEL_SDK_DISABLED", "otel_sdk_disabled"),
        description="true turns tracing off whatever else is set.",
        json_schema_extra=in_section(TRACING),
    )

    @property
    def trace_exporters(self) -> list[str]:
        """The span exporters to run; empty means tracing is off (and costs nothing)."""
        if self.otel_sdk_disabled:
            return []
        named = [e.strip().lower() for e in self.otel_traces_exporter.split(",") if e.strip()]
        if not named:
            endpoint = self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint
            named = ["otlp"] if endpoint else []
        return [e for e in named if e != "none"]
