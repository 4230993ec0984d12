"""Typed settings: the only module that reads the environment.

Each setting is described once, here: ``bgsvc settings --markdown`` renders these fields
(grouped by the section each names) as docs/settings.md.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from bgsvc.auth.addresses import parse_networks
from bgsvc.limits.base import RatePolicy
from bgsvc.outbound.policy import AllowList
from bgsvc.outbound.signing import decode_secret


def _empty_is_unset(value: object) -> object:
    return None if value == "" else value


# A directory that may be left unset. An empty value counts as unset: Path("") would
# otherwise be the current directory, wherever the process happens to start.
OptionalDir = Annotated[Path | None, BeforeValidator(_empty_is_unset)]
Provider = Literal["auto", "cpu", "cuda"]
EngineName = Literal["auto", "onnxruntime", "openvino"]
Precision = Literal["auto", "f32", "bf16", "f16"]


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


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "bgsvc"


# Sections of the settings reference, in the order they appear there: each field names
# its own, so the reference is derived from the fields alone.
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


def _in(section: str) -> dict[str, Any]:
    """A field's json_schema_extra: the reference section it is listed under."""
    return {"section": section}


class Settings(BaseSettings):
    """Every knob of the service; environment variables use the ``BGSVC_`` prefix."""

    # populate_by_name: code passes settings by field name (Settings(workers=2)); were the
    # name one of the aliases instead, the environment would be searched for it too, and
    # a bare WORKERS variable would set the worker count.
    model_config = SettingsConfigDict(env_prefix="BGSVC_", extra="ignore", populate_by_name=True)

    host: str = Field(
        default="127.0.0.1",
        description="Address `bgsvc serve` binds to.",
        json_schema_extra=_in(SERVER),
    )
    port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        description="Port `bgsvc serve` binds to.",
        json_schema_extra=_in(SERVER),
    )
    node_name: str = Field(
        default="",
        description="Name sent in X-Served-By; empty means hostname:port.",
        json_schema_extra=_in(SERVER),
    )
    workers: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("BGSVC_WORKERS", "WEB_CONCURRENCY"),
        description="gunicorn worker processes (deploy/gunicorn.conf.py); on the CPU keep "
        "workers x intra_op_threads = cores. Unset on a CUDA host: 2 per GPU (docs/gpu.md).",
        json_schema_extra=_in(SERVER),
    )
    drain_seconds: float = Field(
        default=5.0,
        ge=0,
        description="After SIGTERM: seconds /ready answers 503 while the node still serves "
        "everything it receives, before it stops listening and finishes in-flight requests.",
        json_schema_extra=_in(SERVER),
    )
    ui_enabled: bool = Field(
        default=True, description="Serve the web page at /.", json_schema_extra=_in(SERVER)
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Lowest level logged, for every logger of the process (httpx and "
        "httpcore stay at warning or above: their lines carry full URLs).",
        json_schema_extra=_in(SERVER),
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text (one readable line) or json (one JSON object per line, for "
        "Loki/ELK), for every line of the process: bgsvc, uvicorn and gunicorn.",
        json_schema_extra=_in(SERVER),
    )
    access_log: bool = Field(
        default=True,
        description="One record per request (route, status, duration in seconds) at info; "
        "/health, /ready and /metrics at debug.",
        json_schema_extra=_in(SERVER),
    )

    # Tracing is on when a trace exporter or an OTLP endpoint is named; the SDK itself
    # reads the other OTEL_* variables (headers, sampler, batch sizes).
    otel_traces_exporter: str = Field(
        default="",
        validation_alias=AliasChoices("OTEL_TRACES_EXPORTER", "otel_traces_exporter"),
        description="otlp, console or none (comma-separated); empty means otlp when an "
        "OTLP endpoint is set, else tracing off.",
        json_schema_extra=_in(TRACING),
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
        json_schema_extra=_in(TRACING),
    )
    otel_exporter_otlp_traces_endpoint: str = Field(
        default="",
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "otel_exporter_otlp_traces_endpoint"
        ),
        description="Full OTLP/HTTP URL for spans; overrides the base endpoint.",
        json_schema_extra=_in(TRACING),
    )
    otel_service_name: str = Field(
        default="bgsvc",
        validation_alias=AliasChoices("OTEL_SERVICE_NAME", "otel_service_name"),
        description="service.name of the spans.",
        json_schema_extra=_in(TRACING),
    )
    otel_sdk_disabled: bool = Field(
        default=False,
        validation_alias=AliasChoices("OTEL_SDK_DISABLED", "otel_sdk_disabled"),
        description="true turns tracing off whatever else is set.",
        json_schema_extra=_in(TRACING),
    )

    model_dir: Path = Field(
        default_factory=_default_model_dir,
        description="Where fetched models are stored.",
        json_schema_extra=_in(MODELS),
    )
    default_model: str = Field(
        default="imgly-medium",
        description="Model used when none is asked.",
        json_schema_extra=_in(MODELS),
    )
    models: list[str] = Field(
        default_factory=list,
        description="Allow-list of models loaded at start and selectable per request; "
        "empty means only the default model, which is always allowed.",
        json_schema_extra=_in(MODELS),
    )
    custom_models: dict[str, CustomModel] = Field(
        default_factory=dict,
        description='Extra ONNX files: {"name": {"path": "...", "profile": "isnet"}}; '
        "profile is imgly, isnet, u2net or birefnet, and input_size and output_index "
        "override the profile's.",
        json_schema_extra=_in(MODELS),
    )
    engine: EngineName = Field(
        default="auto",
        description="Inference engine. auto: ONNX Runtime on a CUDA host; on the CPU, OpenVINO "
        "at the fastest precision that passes the quality gate, else ONNX Runtime float32. "
        "onnxruntime or openvino: that engine (OpenVINO runs on the CPU only).",
        json_schema_extra=_in(MODELS),
    )
    precision: Precision = Field(
        default="auto",
        description="OpenVINO's inference precision. auto: measured on the calibration photos "
        "and gated (IoU >= 0.995, MAE <= 1 level against float32 on every photo); f32, bf16, "
        "f16: that one, ungated.",
        json_schema_extra=_in(MODELS),
    )
    openvino_cache_dir: OptionalDir = Field(
        default=None,
        description="Where OpenVINO's compiled models and the precision trials are kept "
        "(written on the first start on a machine); unset means <model_dir>/.prepared/openvino. "
        "Point it at a writable volume when the model directory is read-only.",
        json_schema_extra=_in(MODELS),
    )
    provider: Provider = Field(
        default="auto",
        description="ONNX Runtime provider: auto (CUDA if usable), cuda, cpu.",
        json_schema_extra=_in(MODELS),
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="Inference threads per process (ORT's intra-op, OpenVINO's); 0 means "
        "the usable cores shared out over the workers (cores // workers, at least 1).",
        json_schema_extra=_in(MODELS),
    )
    inter_op_threads: int = Field(
        default=1, ge=1, description="ORT inter-op threads.", json_schema_extra=_in(MODELS)
    )
    warmup: bool = Field(
        default=True,
        description="Run one inference before reporting ready.",
        json_schema_extra=_in(MODELS),
    )

    # Defaults follow benchmarks/RESULTS.md.
    cpu_fp32: bool = Field(
        default=True,
        description="On the CPU provider, run a cached float32 copy of fp16 models "
        "(made once in <model_dir>/.prepared; the fetched file stays as verified).",
        json_schema_extra=_in(CPU_RUNTIME),
    )
    cpu_int8: bool = Field(
        default=False,
        description="On the CPU provider, run a static int8 (QDQ) copy calibrated on photos "
        "(made once; ~1.5x faster, mattes IoU >= 0.98 vs float32 in benchmarks/RESULTS.md).",
        json_schema_extra=_in(CPU_RUNTIME),
    )
    int8_calibration_dir: OptionalDir = Field(
        default=None,
        description="Photos to calibrate the int8 copy on; unset means scikit-image's samples.",
        json_schema_extra=_in(CPU_RUNTIME),
    )
    cache_optimized_model: bool = Field(
        default=True,
        description="Save ORT's fully optimised graph to <model_dir>/.prepared and load it "
        "on later starts (CPU provider).",
        json_schema_extra=_in(CPU_RUNTIME),
    )
    graph_pipeline: bool = Field(
        default=True,
        description="Run the resize to the model's input, the normalisation, the output "
        "transform and the resize back inside the ONNX graph (a wrapped copy cached in "
        "<model_dir>/.prepared); false: numpy/OpenCV around the bare model.",
        json_schema_extra=_in(CPU_RUNTIME),
    )
    allow_spinning: bool = Field(
        default=False,
        description="Let ORT worker threads busy-wait between ops (burns idle CPU).",
        json_schema_extra=_in(CPU_RUNTIME),
    )
    malloc_mmap_threshold_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        le=32 * 1024 * 1024,
        description="glibc malloc: allocations below this come from the heap and are reused, "
        "not mmap()ed and page-faulted in per request. glibc's own adaptive threshold gets "
        "there in most runs but not always (in a fresh node's first requests PNG encode took "
        "24-26 ms instead of 12, benchmarks/RESULTS.md); 0 keeps glibc's defaults.",
        json_schema_extra=_in(CPU_RUNTIME),
    )
    stage_thread_nice: int = Field(
        default=0,
        ge=0,
        le=19,
        description="Niceness of the decode/encode threads (e.g. 10), so the forward pass "
        "wins the cores under saturation; 0 leaves them at the process's priority. "
        "No gain measured on 2 cores (benchmarks/RESULTS.md).",
        json_schema_extra=_in(CPU_RUNTIME),
    )

    cuda_device_id: int = Field(
        default=0,
        ge=0,
        description="CUDA device ordinal (under gunicorn, set per worker from BGSVC_GPU_DEVICES).",
        json_schema_extra=_in(GPU),
    )
    cuda_cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        default="EXHAUSTIVE",
        description="cuDNN convolution algorithm search.",
        json_schema_extra=_in(GPU),
    )
    cuda_arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        default="kSameAsRequested",
        description="How the CUDA memory arena grows.",
        json_schema_extra=_in(GPU),
    )
    cuda_mem_limit_bytes: int = Field(
        default=0,
        ge=0,
        description="CUDA arena limit of one worker in bytes; 0 means no limit. Unset under "
        "gunicorn with several workers on one GPU: 80% of its memory shared out over them. "
        "With the edge step's graphs on the GPU, the model's session gets half and each "
        "graph a quarter (docs/gpu.md).",
        json_schema_extra=_in(GPU),
    )
    io_binding: bool = Field(
        default=True,
        description="Bind inputs/outputs explicitly on GPU providers.",
        json_schema_extra=_in(GPU),
    )
    gpu_fp16: bool = Field(
        default=True,
        description="On GPU, run fp16 weights as shipped (CUDA) or build fp16 engines (TensorRT).",
        json_schema_extra=_in(GPU),
    )
    tensorrt: bool = Field(
        default=False,
        description="Put the TensorRT provider before CUDA (needs onnxruntime-gpu + TensorRT).",
        json_schema_extra=_in(GPU),
    )
    tensorrt_cache_dir: OptionalDir = Field(
        default=None,
        description="TensorRT engine and timing caches; unset means <model_dir>/.prepared/trt.",
        json_schema_extra=_in(GPU),
    )
    gpu_devices: str = Field(
        default="",
        description="CUDA ordinals gunicorn's workers spread over (worker slot i gets "
        "device i mod n), e.g. 0,1; empty means every GPU visible (docs/gpu.md).",
        json_schema_extra=_in(GPU),
    )

    @field_validator("gpu_devices")
    @classmethod
    def _device_list(cls, value: str) -> str:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not all(v.isdigit() for v in items):
            raise ValueError(f"BGSVC_GPU_DEVICES {value!r}: comma-separated CUDA ordinals")
        return ",".join(items)

    cuda_visible_devices: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CUDA_VISIBLE_DEVICES", "cuda_visible_devices"),
        description="CUDA's own device mask; when set, it and not NVML says how many GPUs "
        "the workers can use.",
        json_schema_extra=_in(GPU),
    )

    max_concurrency: int = Field(
        default=0,
        ge=0,
        description="Inferences at once per process; 0 means 4 on a CUDA host and 1 on the "
        "CPU (docs/gpu.md).",
        json_schema_extra=_in(ADMISSION),
    )
    max_queue: int = Field(
        default=4,
        ge=0,
        description="Requests allowed to wait per process for an inference slot (jobs take "
        "the same places); beyond it, 429.",
        json_schema_extra=_in(ADMISSION),
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Per-request budget; beyond it, 504.",
        json_schema_extra=_in(ADMISSION),
    )
    watchdog_s: float = Field(
        default=0.0,
        ge=0,
        description="An inference running longer than this marks the process stuck: /ready "
        "503, then a drain and a fresh process; 0 means 3x request_timeout_s.",
        json_schema_extra=_in(ADMISSION),
    )
    max_upload_bytes: int = Field(
        default=25 * 1024 * 1024,
        ge=1,
        description="Largest accepted request body (413), checked from Content-Length "
        "before the body is read and while it is read.",
        json_schema_extra=_in(ADMISSION),
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
        json_schema_extra=_in(ADMISSION),
    )
    max_output_pixels: int = Field(
        # remove.bg's ceiling for "full"; a request's `size` may ask for less.
        default=25_000_000,
        ge=1,
        le=50_000_000,
        description="Largest result in pixels: larger sources are scaled down to it (aspect "
        "kept). Up to 50 MP, with BGSVC_MAX_PIXELS raised to match for 50 MP sources.",
        json_schema_extra=_in(ADMISSION),
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
        json_schema_extra=_in(ADMISSION),
    )
    allowed_formats: list[str] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF", "HEIF", "AVIF"],
        description="Pillow format names accepted as input (others: 415), in any case; HEIF "
        "covers HEIC. An AVIF still is accepted only when its AV1 frames are no larger than "
        "its header says; animated AVIF is refused.",
        json_schema_extra=_in(ADMISSION),
    )

    @field_validator("allowed_formats")
    @classmethod
    def _upper_formats(cls, value: list[str]) -> list[str]:
        return [v.upper() for v in value]

    body_read_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="Longest time to receive a request body (uploads, jobs, batches); beyond "
        "it, 408 upload_timeout and the connection is closed. A removal's upload is received "
        "before it takes an admission place, so a slow one holds none.",
        json_schema_extra=_in(CLIENTS),
    )
    max_concurrent_uploads: int = Field(
        # (8 + 4) x 25 MiB of bodies in flight, part of a worker's memory budget; behind
        # nginx, which buffers bodies, a node receives each at once.
        default=8,
        ge=1,
        description="Removal bodies received at once per process (each up to "
        "BGSVC_MAX_UPLOAD_BYTES), as many image URLs being fetched, and half as many POST "
        "/jobs submissions, in places of their own; beyond any, 429 overloaded.",
        json_schema_extra=_in(CLIENTS),
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers) a node reads; beyond "
        "it, 431 headers_too_large and the connection is closed.",
        json_schema_extra=_in(CLIENTS),
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request's head must arrive within this of its first byte (of the "
        "connection, for the first request); else the connection is closed, with 408 "
        "header_timeout if part of a head came. A request answered before its body is all "
        "in (a 401, a 404) must finish sending it within this of the answer.",
        json_schema_extra=_in(CLIENTS),
    )
    max_connections: int = Field(
        default=1000,
        ge=0,
        description="Open connections per process (uvicorn's limit_concurrency); a request "
        "beyond it, or with that many still running, gets 503 too_many_connections, except "
        "/health and /ready; 0 means no limit.",
        json_schema_extra=_in(CLIENTS),
    )

    refine: bool = Field(
        default=True,
        description="Enlarge the model's matte to the result's size along the photo's "
        "edges (a colour guided filter) unless a request says refine=false; false: "
        "bilinear unless a request says refine=true.",
        json_schema_extra=_in(OUTPUT),
    )
    decontaminate: bool = Field(
        default=True,
        description="Estimate the subject's colour where the matte is semi-transparent "
        "unless a request says decontaminate=false (rembg's dc, remove.bg's "
        "semitransparency); false: the photo's colour unless a request asks.",
        json_schema_extra=_in(OUTPUT),
    )
    edge_step: Literal["auto", "cpu", "graph"] = Field(
        # Measured on an H200: the graphs on CUDA took a fifth of the kernels' time for the
        # enlargement and three fifths for the colour pass, and leave the host's cores to
        # decoding and encoding; on ONNX Runtime's CPU provider they take 2-13x numba's.
        default="auto",
        description="Where the edge step's full-resolution work runs (the guided "
        "enlargement of the matte and the last pass of the colour estimate): auto, as "
        "graph when the model runs on CUDA or TensorRT, else as cpu; cpu, compiled kernels "
        "in the stage threads; graph, two ONNX graphs in ONNX Runtime, on the model's GPU "
        "when the model runs on one, else on ONNX Runtime's CPU provider. Both give the "
        "same result within one level; a call the graphs fail (device memory exhausted) "
        "runs on the CPU kernels.",
        json_schema_extra=_in(OUTPUT),
    )
    max_edge: int = Field(
        default=2048,
        ge=64,
        description="Long edge of the working copy the model's input and the edge "
        "refinement's coefficients are made from; results keep the source's size.",
        json_schema_extra=_in(OUTPUT),
    )
    png_encoder: Literal["fpng", "zlib"] = Field(
        default="fpng",
        description="PNG writer: fpng (7x faster, 16-37% larger files) or zlib (Pillow; "
        "smallest files, uses BGSVC_PNG_COMPRESS_LEVEL and BGSVC_PNG_ZLIB_STRATEGY). Mattes "
        "always use zlib.",
        json_schema_extra=_in(OUTPUT),
    )
    png_compress_level: int = Field(
        default=1,
        ge=0,
        le=9,
        description="zlib level of the PNGs zlib writes (BGSVC_PNG_ENCODER=zlib, and mattes).",
        json_schema_extra=_in(OUTPUT),
    )
    png_zlib_strategy: Literal["default", "rle"] = Field(
        default="rle",
        description="zlib strategy of the PNGs zlib writes (BGSVC_PNG_ENCODER=zlib, and "
        "mattes); rle is faster and 15-22% smaller on photo cutouts (benchmarks/RESULTS.md).",
        json_schema_extra=_in(OUTPUT),
    )
    jpeg_quality: int = Field(
        default=90,
        ge=1,
        le=100,
        description="JPEG quality when a request names none.",
        json_schema_extra=_in(OUTPUT),
    )
    webp_quality: int = Field(
        default=90,
        ge=1,
        le=100,
        description="WebP quality when a request names none.",
        json_schema_extra=_in(OUTPUT),
    )
    webp_alpha_quality: int = Field(
        default=90,
        ge=0,
        le=100,
        description="WebP alpha plane: 90 quantises it to within 1 level of the matte for "
        "14-35% less encode time than 100, which keeps it lossless (benchmarks/RESULTS.md).",
        json_schema_extra=_in(OUTPUT),
    )
    webp_method: int = Field(
        default=0,
        ge=0,
        le=6,
        description="libwebp effort (0 fastest .. 6 smallest) for WebP output; 0 is 2.4x-2.6x "
        "faster than 2 on 2 MP cutouts at equal or better fidelity, 20-25% larger files.",
        json_schema_extra=_in(OUTPUT),
    )

    result_cache_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Per-process LRU cache of encoded results, in bytes; 0 disables it.",
        json_schema_extra=_in(CACHE),
    )
    redis_url: str = Field(
        default="",
        description="Redis shared by every node and worker (redis://host:6379/0): the job "
        "queue, API keys, rate limits and quotas, and the shared result cache. Empty means "
        "no Redis: each node keeps jobs, keys and limits in SQLite files under "
        "BGSVC_DATA_DIR, and each process has only its local cache.",
        json_schema_extra=_in(CACHE),
    )
    redis_socket_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="Connect and read timeout of each Redis call; a slow or down Redis "
        "costs a request at most this before the cache is bypassed (the job queue allows "
        "at least 2 s).",
        json_schema_extra=_in(CACHE),
    )
    shared_cache: bool = Field(
        default=True,
        description="With BGSVC_REDIS_URL, keep a shared result cache there behind the local "
        "one; false leaves Redis to the job queue, keys and limits.",
        json_schema_extra=_in(CACHE),
    )
    cache_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="Lifetime of a result in Redis, before jitter.",
        json_schema_extra=_in(CACHE),
    )
    cache_ttl_jitter_s: float = Field(
        default=300.0,
        ge=0,
        description="Each Redis entry lives BGSVC_CACHE_TTL_S plus or minus a random share "
        "of this (must be below it), so entries written together do not expire together.",
        json_schema_extra=_in(CACHE),
    )
    cache_lock_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long one node holds the Redis lock on a result it computes; other "
        "nodes poll for it that long, then compute it themselves.",
        json_schema_extra=_in(CACHE),
    )

    job_timeout_s: float = Field(
        # Room for the largest animation a job takes (BGSVC_JOB_MAX_FRAMES) on a CPU without
        # AMX: 80 small GIF frames ran past 60 s on every attempt of a 2-core AMD EPYC
        # (OpenVINO bf16, about 1 s a forward pass), and failed after three minutes of model
        # work. A stuck attempt is ended sooner by its own deadlines (the model's watchdog,
        # the media child's step limit); a dead node's jobs by their lease.
        default=300.0,
        gt=0,
        description="Hard limit on one attempt of a job; beyond it, a retry (after the last "
        "attempt, job_timeout).",
        json_schema_extra=_in(JOBS),
    )
    job_max_frames: int = Field(
        # At the per-frame cost behind BGSVC_SYNC_MAX_FRAMES (0.23-0.25 s), 80 frames take
        # about 19 s; at 1-1.7 s a frame (a CPU without AMX: bf16, or ONNX Runtime f32) up
        # to 136 s, within a job's attempt (BGSVC_JOB_TIMEOUT_S).
        default=80,
        ge=1,
        description="Most frames of an animation a job takes (BGSVC_SYNC_MAX_FRAMES for a "
        "request); the pixels over all frames stay within BGSVC_MAX_PIXELS.",
        json_schema_extra=_in(JOBS),
    )
    video_max_duration_s: float = Field(
        default=60.0,
        gt=0,
        description="Longest video a job takes, in seconds, read from the container's "
        "header before any frame is decoded (413 video_too_large).",
        json_schema_extra=_in(VIDEO),
    )
    video_max_frames: int = Field(
        # 30 s at 30 frames/s. A video is cut into segments of one attempt's work each
        # (BGSVC_VIDEO_SEGMENT_PIXELS), so its length is bounded by credits and patience,
        # not by BGSVC_JOB_TIMEOUT_S.
        default=900,
        ge=1,
        description="Most frames of a video a job takes, from the stream's header (or its "
        "duration times its frame rate), before any frame is decoded (413 video_too_large). "
        "Each frame costs a credit.",
        json_schema_extra=_in(VIDEO),
    )
    video_max_frame_pixels: int = Field(
        default=1920 * 1080,
        ge=1,
        description="Largest video frame in pixels (width x height from the header; 1080p "
        "by default), 413 video_too_large beyond it.",
        json_schema_extra=_in(VIDEO),
    )
    video_max_total_pixels: int = Field(
        # 10 s of 1080p at 30 frames/s (22 s of 720p).
        default=300 * 1920 * 1080,
        ge=1,
        description="Most pixels over all of a video's frames (frames x width x height, from "
        "the header), 413 video_too_large beyond it.",
        json_schema_extra=_in(VIDEO),
    )
    video_segment_pixels: int = Field(
        # 30 frames of 1080p (7 of 4K): a segment is one attempt's work, and each costs a
        # media child's start and a decode from a key frame (about 0.45 s of CPU, measured
        # on 1080p): 13-frame segments of 1080p, sized for the 60 s attempts of the time,
        # spent 92 ms of the child's CPU a frame against 58 with 30 (benchmarks/RESULTS.md).
        # A 1080p frame takes about 1.1 s on a 2-core CPU without AMX, so a segment takes
        # 35 s alone and about 100 s while three nodes share the cores, within the attempt.
        default=30 * 1920 * 1080,
        ge=1,
        description="A video job with more pixels over its frames than this, or more frames "
        "than BGSVC_VIDEO_SEGMENT_FRAMES, is cut into segments of at most this many pixels "
        "and that many frames, each run as a job of its own by whichever node has room, then "
        "stitched into one file; each must finish within BGSVC_JOB_TIMEOUT_S. A segment's "
        "mattes are smoothed from its own first frame on.",
        json_schema_extra=_in(VIDEO),
    )
    video_segment_frames: int = Field(
        # Every frame costs a forward pass at the model's own input size, however small the
        # frame: by pixels alone, 360 frames of 320x240 were one segment, a job that could
        # only time out on every attempt (and be refunded whole each time).
        default=30,
        ge=1,
        description="Most frames of a video segment (BGSVC_VIDEO_SEGMENT_PIXELS), for videos "
        "whose frames are small: each frame goes through the model at its own input size.",
        json_schema_extra=_in(VIDEO),
    )
    video_smoothing: bool = Field(
        default=True,
        description="Smooth a video's mattes from frame to frame, where the picture holds "
        "still, so soft edges do not flicker; per job with smooth=true|false. Off, every "
        "frame is matted alone, as a still would be.",
        json_schema_extra=_in(VIDEO),
    )
    video_step_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Videos are decoded and encoded in a child process; the longest it may "
        "take to open the file or to deliver the next frame. Beyond it the child is killed "
        "and the job fails with 422 video_timeout.",
        json_schema_extra=_in(VIDEO),
    )
    video_child_memory_bytes: int = Field(
        # The child's interpreter, numpy and PyAV take ~300 MiB of address space before any
        # frame; a 1080p VP9 encoder and decoder with their frames take a few hundred more.
        default=2 * 1024**3,
        ge=256 * 1024**2,
        description="Address space of the child process that decodes and encodes a video "
        "(RLIMIT_AS); a file that needs more fails with 400 invalid_video. Its CPU time is "
        "held to BGSVC_JOB_TIMEOUT_S (RLIMIT_CPU).",
        json_schema_extra=_in(VIDEO),
    )
    job_max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Attempts per job (time-outs, crashes, storage errors) before it is failed.",
        json_schema_extra=_in(JOBS),
    )
    job_queue_limit: int = Field(
        default=1000,
        ge=1,
        description="Unfinished (queued or running) jobs accepted; beyond it POST /jobs is 429.",
        json_schema_extra=_in(JOBS),
    )
    job_queue_limit_per_key: int = Field(
        default=250,
        ge=1,
        description="Unfinished jobs one API key may have (batch items included); beyond it "
        "that key's POST /jobs and /batches are 429 job_queue_full while other keys keep their "
        "room. Applies with BGSVC_AUTH=required; capped by BGSVC_JOB_QUEUE_LIMIT.",
        json_schema_extra=_in(JOBS),
    )
    job_redeliver_s: float = Field(
        default=10.0,
        ge=1,
        description="With BGSVC_REDIS_URL: a process whose heartbeat is this old is dead, and "
        "its running jobs go to another process (dramatiq's heartbeat_timeout).",
        json_schema_extra=_in(JOBS),
    )
    batch_max_items: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Images in one POST /batches; beyond it, 413 batch_too_large.",
        json_schema_extra=_in(JOBS),
    )
    batch_max_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1,
        description="Largest POST /batches body, and largest total uncompressed size of a zip "
        "upload's entries (413); each image is also held to BGSVC_MAX_UPLOAD_BYTES.",
        json_schema_extra=_in(JOBS),
    )
    batch_max_zip_entries: int = Field(
        default=0,
        ge=0,
        description="Entries a batch's zip may hold, directories and skipped files included, "
        "read from its end record before its directory is parsed (413 batch_too_large "
        "beyond); 0 means 5x BGSVC_BATCH_MAX_ITEMS.",
        json_schema_extra=_in(JOBS),
    )
    batch_max_intakes: int = Field(
        # One: an intake may hold twice BGSVC_BATCH_MAX_BYTES (400 MiB by default), part of
        # a worker's memory budget.
        default=1,
        ge=1,
        description="POST /batches bodies received and unpacked at once per process (each up "
        "to BGSVC_BATCH_MAX_BYTES, twice over while unpacked); beyond it, 429 overloaded.",
        json_schema_extra=_in(JOBS),
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the service keeps its own files (SQLite job, key and limit "
        "stores without Redis); results go to <data_dir>/results unless BGSVC_STORAGE_URL "
        "says otherwise.",
        json_schema_extra=_in(STORAGE),
    )
    storage_url: str = Field(
        default="",
        description="Result store: file:///path (a directory) or s3://bucket/prefix; empty "
        "means file://<data_dir>/results (docs/storage.md).",
        json_schema_extra=_in(STORAGE),
    )

    @field_validator("storage_url")
    @classmethod
    def _known_storage_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if value and not (sep and scheme in ("file", "s3") and rest.strip("/")):
            raise ValueError(
                f"BGSVC_STORAGE_URL {value!r}: use file:///absolute/path or s3://bucket/prefix"
            )
        return value

    s3_endpoint_url: str = Field(
        default="",
        description="S3 API endpoint for MinIO or another S3-compatible store (e.g. "
        "http://minio:9000); empty means AWS. Credentials and region come from boto3's own "
        "chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ...).",
        json_schema_extra=_in(STORAGE),
    )
    s3_presign: bool = Field(
        default=False,
        description="Give clients presigned S3 GET URLs for results instead of proxying the "
        "bytes; the endpoint must be reachable by them.",
        json_schema_extra=_in(STORAGE),
    )
    s3_presign_expires_s: int = Field(
        default=3600,
        ge=1,
        le=7 * 24 * 3600,
        description="Lifetime of a presigned URL (at most 7 days).",
        json_schema_extra=_in(STORAGE),
    )
    job_ttl_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="Results (and kept originals) older than this are deleted: by a periodic "
        "sweep for file://, by a bucket lifecycle rule for s3:// (docs/storage.md).",
        json_schema_extra=_in(STORAGE),
    )
    store_originals: bool = Field(
        default=False,
        description="Keep each job's uploaded image next to its result.",
        json_schema_extra=_in(STORAGE),
    )

    outbound_allow: str = Field(
        default="",
        description="Exceptions to the outbound address policy, comma-separated: host, "
        "host:port, IP, IP:port, [IPv6]:port or CIDR (e.g. 127.0.0.1:9000,hooks.internal). "
        "A name lets that name reach whatever it resolves to; an address or network lets any "
        "name reach it. Empty means public addresses only (docs/webhooks.md).",
        json_schema_extra=_in(OUTBOUND),
    )

    @field_validator("outbound_allow")
    @classmethod
    def _valid_outbound_allow(cls, value: str) -> str:
        AllowList.parse(value)
        return value

    outbound_connect_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="Outbound requests: resolving the name, then connecting, each at most "
        "this long.",
        json_schema_extra=_in(OUTBOUND),
    )
    outbound_read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Outbound requests: longest wait for the next bytes of a response.",
        json_schema_extra=_in(OUTBOUND),
    )
    outbound_total_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Outbound requests: the whole exchange, redirects included (bounds a "
        "body dripped slower than the read timeout).",
        json_schema_extra=_in(OUTBOUND),
    )
    webhook_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Standard Webhooks signing key: whsec_ + base64 of at least 24 random "
        "bytes, checked at start (docs/webhooks.md shows how to make one). With "
        "auth=required each key signs with its own secret and this one only for keys made "
        "before per-key secrets (until rotated) and work submitted without a key; with auth "
        "off it signs everything, and empty means webhooks cannot be sent.",
        json_schema_extra=_in(OUTBOUND),
    )

    @field_validator("webhook_secret")
    @classmethod
    def _valid_webhook_secret(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            decode_secret(value.get_secret_value())
        return value

    webhook_attempts: int = Field(
        default=8,
        ge=1,
        le=30,
        description="Delivery attempts per webhook event; a 2xx, a 410 or an address the "
        "outbound policy refuses ends them.",
        json_schema_extra=_in(OUTBOUND),
    )
    webhook_backoff_base_s: float = Field(
        default=15.0,
        ge=0,
        description="Wait after the first failed attempt is uniform in [0, base]; the bound "
        "doubles per attempt (full jitter).",
        json_schema_extra=_in(OUTBOUND),
    )
    webhook_backoff_max_s: float = Field(
        default=300.0,
        ge=0,
        description="Longest wait between two webhook attempts; a receiver's Retry-After is "
        "honoured up to it.",
        json_schema_extra=_in(OUTBOUND),
    )
    url_inputs: bool = Field(
        default=False,
        description="Fetch images given by URL (remove.bg image_url, rembg GET "
        "/api/remove?url=, image_url on /remove-background and /jobs) through the outbound "
        "guard; false: such requests get 400 invalid_parameter.",
        json_schema_extra=_in(OUTBOUND),
    )

    auth: Literal["off", "required"] = Field(
        default="off",
        description="required: every API route needs a key (X-Api-Key or Authorization: "
        "Bearer); off: no checks at all.",
        json_schema_extra=_in(ACCESS),
    )
    auth_pepper: SecretStr = Field(
        default=SecretStr(""),
        description="Server-side key of the HMAC-SHA256 under which key secrets are stored "
        "(at least 16 characters, e.g. openssl rand -base64 32); the service refuses to "
        "start with auth=required without it, and `bgsvc keys` needs the same value. "
        "Changing it invalidates every key.",
        json_schema_extra=_in(ACCESS),
    )
    trusted_proxies: str = Field(
        default="",
        description="Addresses or CIDRs of the proxies in front of the service (e.g. nginx's): "
        "from them, the client is the right-most X-Forwarded-For address not in this list, "
        "for uvicorn (every request's client address, under `bgsvc serve` and gunicorn, "
        "which ignore FORWARDED_ALLOW_IPS) and for the failed-authentication budget; "
        "empty: no proxy is trusted, the socket peer is the client.",
        json_schema_extra=_in(ACCESS),
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_trusted_proxies(cls, value: str) -> str:
        parse_networks(value)
        return value

    auth_fail_limit: str = Field(
        default="20/min",
        description="Failed authentications allowed per client address (N/s, N/min, N/hour, "
        "N/day; that many at once, then refilled evenly); beyond it, 429.",
        json_schema_extra=_in(ACCESS),
    )

    @field_validator("auth_fail_limit")
    @classmethod
    def _valid_auth_fail_limit(cls, value: str) -> str:
        RatePolicy.parse(value)
        return value

    rate_limit_fail_open: bool = Field(
        default=True,
        description="When the limits store (Redis, or the node's SQLite file) fails: true "
        "admits the request (counted in bgsvc_limits_errors_total, one warning per 30 s); "
        "false refuses it with 503 limits_unavailable.",
        json_schema_extra=_in(ACCESS),
    )
    metrics_max_keys: int = Field(
        default=50,
        ge=0,
        description="Distinct key names per process labelled in metrics; the rest are 'other'.",
        json_schema_extra=_in(ACCESS),
    )
    metrics_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token GET /metrics requires (Authorization: Bearer <token>, at "
        "least 16 characters, e.g. openssl rand -hex 32; 401 without it); empty: /metrics is "
        "open, and with BGSVC_AUTH=required it leaves out the series labelled by key name.",
        json_schema_extra=_in(ACCESS),
    )

    @field_validator("metrics_token")
    @classmethod
    def _long_metrics_token(cls, value: SecretStr) -> SecretStr:
        if 0 < len(value.get_secret_value()) < 16:
            raise ValueError("BGSVC_METRICS_TOKEN: at least 16 characters")
        return value

    prometheus_multiproc_dir: OptionalDir = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"),
        description="prometheus-client's multiprocess directory: needed under gunicorn with "
        "several workers (deploy/start.sh sets /tmp/bgsvc-metrics), else /metrics shows one "
        "worker's figures only.",
        json_schema_extra=_in(ACCESS),
    )

    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate chain nginx serves for `bgsvc cluster up` (HTTPS on); "
        "unset with --tls: a throwaway CA and certificate for the run, in <run dir>/tls.",
        json_schema_extra=_in(EDGE),
    )
    tls_key: Path | None = Field(
        default=None,
        description="PEM private key of BGSVC_TLS_CERT (both or neither).",
        json_schema_extra=_in(EDGE),
    )
    edge_rate_per_s: int = Field(
        default=100,
        ge=0,
        description="nginx flood guard: requests per second one client address may "
        "sustain (`bgsvc cluster up`; the Compose file ships the same); beyond it nginx "
        "answers 429 itself. 0 turns the guard off.",
        json_schema_extra=_in(EDGE),
    )
    edge_burst: int = Field(
        default=200,
        ge=0,
        description="nginx flood guard: requests above the rate let through at once before 429.",
        json_schema_extra=_in(EDGE),
    )
    cors_origins: str = Field(
        default="",
        description="Origins (scheme://host[:port], comma-separated) whose pages may call "
        "the API from a browser (preflights are answered before authentication; no "
        "credentials mode); empty sends no CORS headers.",
        json_schema_extra=_in(EDGE),
    )

    @model_validator(mode="after")
    def _tls_cert_with_key(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("BGSVC_TLS_CERT and BGSVC_TLS_KEY go together")
        return self

    @model_validator(mode="after")
    def _pepper_when_required(self) -> Settings:
        pepper = self.auth_pepper.get_secret_value()
        if pepper and len(pepper) < 16:
            raise ValueError("BGSVC_AUTH_PEPPER: at least 16 characters")
        if self.auth == "required" and not pepper:
            raise ValueError(
                "BGSVC_AUTH=required needs BGSVC_AUTH_PEPPER (e.g. openssl rand -base64 32)"
            )
        return self

    @model_validator(mode="after")
    def _jitter_below_ttl(self) -> Settings:
        if self.cache_ttl_jitter_s >= self.cache_ttl_s:
            raise ValueError("BGSVC_CACHE_TTL_JITTER_S must be below BGSVC_CACHE_TTL_S")
        return self

    @model_validator(mode="after")
    def _default_in_allow_list(self) -> Settings:
        if not self.models:
            self.models = [self.default_model]
        elif self.default_model not in self.models:
            self.models = [self.default_model, *self.models]
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        """BGSVC_CORS_ORIGINS as a list; empty means no CORS."""
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

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

    @property
    def forwarded_allow_ips(self) -> list[str]:
        """BGSVC_TRUSTED_PROXIES as uvicorn's and gunicorn's forwarded_allow_ips: networks
        in canonical form (gunicorn refuses host bits, as in 10.0.0.1/8)."""
        return [str(net) for net in parse_networks(self.trusted_proxies)]

    @property
    def gpu_device_ids(self) -> tuple[int, ...]:
        """BGSVC_GPU_DEVICES as ordinals; empty means every visible GPU."""
        return tuple(int(v) for v in self.gpu_devices.split(",") if v)

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
        request (its body's deadline, then its budget), plus a margin. Past it gunicorn
        kills the worker."""
        return self.drain_seconds + self.in_flight_timeout_s

    @property
    def in_flight_timeout_s(self) -> float:
        """How long an accepted request may still take: its body's deadline, then its
        budget, plus a margin (uvicorn's graceful shutdown, after the drain window)."""
        return self.body_read_timeout_s + self.request_timeout_s + 5.0

    @property
    def effective_batch_max_zip_entries(self) -> int:
        """The cap on a batch zip's entries: a few per image, for the directories and the
        files archivers add (macOS resource forks, dotfiles)."""
        return self.batch_max_zip_entries or 5 * self.batch_max_items

    @property
    def effective_watchdog_s(self) -> float:
        """The stuck-inference limit: by then the request had its 504 long ago, so the
        inference is holding a slot for nobody."""
        return self.watchdog_s or 3.0 * self.request_timeout_s


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
