"""Settings of a result's making and keeping: the edge step, encoders, the result cache."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

from bgsvc.config.sections import CACHE, OUTPUT, in_section


class OutputSettings(BaseModel):
    """The edge step, and how results are encoded."""

    refine: bool = Field(
        default=True,
        description="Enlarge the model's matte to the result's size along the photo's "
        "edges (a colour guided filter) unless a request says refine=false; false: "
        "bilinear unless a request says refine=true.",
        json_schema_extra=in_section(OUTPUT),
    )
    decontaminate: bool = Field(
        default=True,
        description="Estimate the subject's colour where the matte is semi-transparent "
        "unless a request says decontaminate=false (rembg's dc, remove.bg's "
        "semitransparency); false: the photo's colour unless a request asks.",
        json_schema_extra=in_section(OUTPUT),
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
        json_schema_extra=in_section(OUTPUT),
    )
    max_edge: int = Field(
        default=2048,
        ge=64,
        description="Long edge of the working copy the model's input and the edge "
        "refinement's coefficients are made from; results keep the source's size.",
        json_schema_extra=in_section(OUTPUT),
    )
    png_encoder: Literal["fpng", "zlib"] = Field(
        default="fpng",
        description="PNG writer: fpng (7x faster, 16-37% larger files) or zlib (Pillow; "
        "smallest files, uses BGSVC_PNG_COMPRESS_LEVEL and BGSVC_PNG_ZLIB_STRATEGY). Mattes "
        "always use zlib.",
        json_schema_extra=in_section(OUTPUT),
    )
    png_compress_level: int = Field(
        default=1,
        ge=0,
        le=9,
        description="zlib level of the PNGs zlib writes (BGSVC_PNG_ENCODER=zlib, and mattes).",
        json_schema_extra=in_section(OUTPUT),
    )
    png_zlib_strategy: Literal["default", "rle"] = Field(
        default="rle",
        description="zlib strategy of the PNGs zlib writes (BGSVC_PNG_ENCODER=zlib, and "
        "mattes); rle is faster and 15-22% smaller on photo cutouts (benchmarks/RESULTS.md).",
        json_schema_extra=in_section(OUTPUT),
    )
    jpeg_quality: int = Field(
        default=90,
        ge=1,
        le=100,
        description="JPEG quality when a request names none.",
        json_schema_extra=in_section(OUTPUT),
    )
    webp_quality: int = Field(
        default=90,
        ge=1,
        le=100,
        description="WebP quality when a request names none.",
        json_schema_extra=in_section(OUTPUT),
    )
    webp_alpha_quality: int = Field(
        default=90,
        ge=0,
        le=100,
        description="WebP alpha plane: 90 quantises it to within 1 level of the matte for "
        "14-35% less encode time than 100, which keeps it lossless (benchmarks/RESULTS.md).",
        json_schema_extra=in_section(OUTPUT),
    )
    webp_method: int = Field(
        default=0,
        ge=0,
        le=6,
        description="libwebp effort (0 fastest .. 6 smallest) for WebP output; 0 is 2.4x-2.6x "
        "faster than 2 on 2 MP cutouts at equal or better fidelity, 20-25% larger files.",
        json_schema_extra=in_section(OUTPUT),
    )


class CacheSettings(BaseModel):
    """The result cache, and Redis."""

    result_cache_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Per-process LRU cache of encoded results, in bytes; 0 disables it.",
        json_schema_extra=in_section(CACHE),
    )
    redis_url: str = Field(
        default="",
        description="Redis shared by every node and worker (redis://host:6379/0): the job "
        "queue, API keys, rate limits and quotas, and the shared result cache. Empty means "
        "no Redis: each node keeps jobs, keys and limits in SQLite files under "
        "BGSVC_DATA_DIR, and each process has only its local cache.",
        json_schema_extra=in_section(CACHE),
    )
    redis_socket_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="Connect and read timeout of each Redis call; a slow or down Redis "
        "costs a request at most this before the cache is bypassed (the job queue allows "
        "at least 2 s).",
        json_schema_extra=in_section(CACHE),
    )
    shared_cache: bool = Field(
        default=True,
        description="With BGSVC_REDIS_URL (or BGSVC_CACHE_REDIS_URL), keep a shared result "
        "cache there behind the local one; false leaves Redis to the job queue, keys and "
        "limits.",
        json_schema_extra=in_section(CACHE),
    )
    cache_redis_url: str = Field(
        default="",
        description="A Redis for the shared result cache alone (redis://host:6379/0); empty "
        "means BGSVC_REDIS_URL's. Give the cache one of its own, with maxmemory and the "
        "allkeys-lru policy: its entries are megabytes that only their TTL ends, while the "
        "Redis of jobs, keys and limits must never evict, and full, it stops them for every "
        "tenant.",
        json_schema_extra=in_section(CACHE),
    )
    shared_cache_max_entry_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="Largest result written to the shared cache; a larger one is kept in the "
        "process's own cache only. 0 means no limit.",
        json_schema_extra=in_section(CACHE),
    )
    cache_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="Lifetime of a result in Redis, before jitter.",
        json_schema_extra=in_section(CACHE),
    )
    cache_ttl_jitter_s: float = Field(
        default=300.0,
        ge=0,
        description="Each Redis entry lives BGSVC_CACHE_TTL_S plus or minus a random share "
        "of this (must be below it), so entries written together do not expire together.",
        json_schema_extra=in_section(CACHE),
    )
    cache_lock_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long one node holds the Redis lock on a result it computes; other "
        "nodes poll for it that long, then compute it themselves.",
        json_schema_extra=in_section(CACHE),
    )

    @model_validator(mode="after")
    def _jitter_below_ttl(self) -> Self:
        if self.cache_ttl_jitter_s >= self.cache_ttl_s:
            raise ValueError("BGSVC_CACHE_TTL_JITTER_S must be below BGSVC_CACHE_TTL_S")
        return self
