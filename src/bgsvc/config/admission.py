"""Settings that bound the work a process takes in: inferences, uploads, connections."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from bgsvc.config.sections import ADMISSION, CLIENTS, in_section


class AdmissionSettings(BaseModel):
    """How much work a process admits, and the images it accepts."""

    max_concurrency: int = Field(
        default=0,
        ge=0,
        description="Inferences at once per process; 0 means 4 on a CUDA host and 1 on the "
        "CPU (docs/gpu.md).",
        json_schema_extra=in_section(ADMISSION),
    )
    max_queue: int = Field(
        default=4,
        ge=0,
        description="Requests allowed to wait per process for an inference slot (jobs take "
        "the same places); beyond it, 429.",
        json_schema_extra=in_section(ADMISSION),
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Per-request budget; beyond it, 504.",
        json_schema_extra=in_section(ADMISSION),
    )
    watchdog_s: float = Field(
        default=0.0,
        ge=0,
        description="An inference running longer than this marks the process stuck: /ready "
        "503, then a drain and a fresh process; 0 means 3x request_timeout_s.",
        json_schema_extra=in_section(ADMISSION),
    )
    max_upload_bytes: int = Field(
        default=25 * 1024 * 1024,
        ge=1,
        description="Largest accepted request body (413), checked from Content-Length "
        "before the body is read and while it is read.",
        json_schema_extra=in_section(ADMISSION),
    )
    max_pixels: int = Field(
        # Decoding the costliest kind (WebP with alpha, ~26 bytes a pixel) takes ~0.63 GiB
        # at 25 MP, and the two decodes a worker runs at once fit its memory budget
        # (benchmarks/decode_memory.py).
        default=25_000_000,
        ge=1,
        description="Largest source image in pixels, read from its header before decoding "
        "(413). 25 MP is a 6000 x 4000 camera photo and remove.bg's own ceiling; it bounds "
        "a worker's memory, so raise it only with the memory budget.",
        json_schema_extra=in_section(ADMISSION),
    )
    max_output_pixels: int = Field(
        # remove.bg's ceiling for "full"; a request's `size` may ask for less.
        default=25_000_000,
        ge=1,
        le=50_000_000,
        description="Largest result in pixels: larger sources are scaled down to it (aspect "
        "kept). Up to 50 MP, with BGSVC_MAX_PIXELS raised to match for 50 MP sources.",
        json_schema_extra=in_section(ADMISSION),
    )
    sync_max_frames: int = Field(
        # A frame of a 480x320 clip costs 0.23-0.25 s on the default model on 2 Xeon cores
        # with AMX, one request at a time (benchmarks/animated.py, quiet machine), and
        # 0.8 s on 2 AMD EPYC cores without it (bf16): 25 frames took 20-21 s there, two
        # thirds of the 30 s request budget with nothing else running; 12 took 9.7-10.1 s,
        # a third, which leaves room for each frame's pass to queue behind other requests'.
        default=12,
        ge=1,
        description="Most frames of an animated GIF, WebP or PNG that POST /remove-background "
        "takes (each goes through the model); beyond it, or beyond BGSVC_MAX_PIXELS over all "
        "frames (frames x width x height), 413 too_many_frames, counted before any frame is "
        "decoded. Longer animations go through POST /jobs (BGSVC_JOB_MAX_FRAMES).",
        json_schema_extra=in_section(ADMISSION),
    )
    allowed_formats: list[str] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF"],
        description="Pillow format names accepted as input (others: 415), in any case; HEIF "
        "covers HEIC. An AVIF still is accepted only when its AV1 frames are no larger than "
        "its header says; animated AVIF is refused.",
        json_schema_extra=in_section(ADMISSION),
    )

    @field_validator("allowed_formats")
    @classmethod
    def _upper_formats(cls, value: list[str]) -> list[str]:
        return [v.upper() for v in value]

    @property
    def effective_watchdog_s(self) -> float:
        """The stuck-inference limit: by then the request had its 504 long ago, so the
        inference is holding a slot for nobody."""
        return self.watchdog_s or 3.0 * self.request_timeout_s


class ClientSettings(BaseModel):
    """Bounds on what a slow or abusive client can hold."""

    body_read_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="Longest time to receive a request body (uploads, jobs, batches); beyond "
        "it, 408 upload_timeout and the connection is closed. A removal's upload is received "
        "before it takes an admission place, so a slow one holds none.",
        json_schema_extra=in_section(CLIENTS),
    )
    max_concurrent_uploads: int = Field(
        # (8 + 4) x 25 MiB of bodies in flight, part of a worker's memory budget; behind
        # nginx, which buffers bodies, a node receives each at once.
        default=8,
        ge=1,
        description="Removal bodies received at once per process (each up to "
        "BGSVC_MAX_UPLOAD_BYTES), as many image URLs being fetched, and half as many POST "
        "/jobs submissions, in places of their own; beyond any, 429 overloaded.",
        json_schema_extra=in_section(CLIENTS),
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers) a node reads; beyond "
        "it, 431 headers_too_large and the connection is closed.",
        json_schema_extra=in_section(CLIENTS),
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request's head must arrive within this of its first byte (of the "
        "connection, for the first request); else the connection is closed, with 408 "
        "header_timeout if part of a head came. A request answered before its body is all "
        "in (a 401, a 404) must finish sending it within this of the answer.",
        json_schema_extra=in_section(CLIENTS),
    )
    max_connections: int = Field(
        default=1000,
        ge=0,
        description="Open connections per process (uvicorn's limit_concurrency). At the "
        "limit, a request is served in place of the connection idle the longest (closed); "
        "with none idle, or that many requests running, it gets 503 too_many_connections, "
        "except /health and /ready; 0 means no limit.",
        json_schema_extra=in_section(CLIENTS),
    )
