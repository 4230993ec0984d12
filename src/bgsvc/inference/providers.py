"""Which ONNX Runtime execution providers a session asks for, with what options, and the
check that it really got them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bgsvc.errors import ProviderUnavailable

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = frozenset({CUDA, TENSORRT})

CudnnSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]
ArenaStrategy = Literal["kNextPowerOfTwo", "kSameAsRequested"]


@dataclass(frozen=True)
class GpuOptions:
    """CUDA and TensorRT provider settings (ignored on the CPU provider)."""

    device_id: int = 0
    # EXHAUSTIVE benchmarks every cuDNN algorithm once per input shape; the model's input
    # shape is fixed, so the one-off cost at warm-up buys the fastest kernels for good.
    cudnn_conv_algo_search: CudnnSearch = "EXHAUSTIVE"
    # kSameAsRequested keeps the arena from doubling past what the model needs.
    arena_extend_strategy: ArenaStrategy = "kSameAsRequested"
    mem_limit_bytes: int = 0
    # The input goes up once and the output comes back once, without ORT's extra copies.
    io_binding: bool = True
    # CUDA runs the shipped fp16 weights as they are (tensor cores); TensorRT builds its
    # engine from the fp32 graph with its own fp16 mode.
    fp16: bool = True
    tensorrt: bool = False
    tensorrt_cache_dir: Path | None = None
    tensorrt_workspace_bytes: int = 2 * 1024**3


def choose_providers(requested: str, available: list[str], *, tensorrt: bool = False) -> list[str]:
    """Providers to ask ORT for; raises ProviderUnavailable when a GPU provider was demanded
    but this onnxruntime build lacks it."""
    if requested == "cpu":
        if tensorrt:
            raise ProviderUnavailable(
                "BGSVC_TENSORRT=true needs BGSVC_PROVIDER=cuda or auto, not cpu."
            )
        return [CPU]
    if tensorrt:
        if TENSORRT not in available:
            raise ProviderUnavailable(
                "BGSVC_TENSORRT=true but this onnxruntime has no TensorRT provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu with TensorRT "
                "libraries, or set BGSVC_TENSORRT=false."
            )
        return [TENSORRT, CUDA, CPU] if CUDA in available else [TENSORRT, CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise ProviderUnavailable(
                "BGSVC_PROVIDER=cuda but this onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use "
                "BGSVC_PROVIDER=cpu."
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


def memory_limits(limit: int, edge_graphs: bool) -> tuple[int, int]:
    """(the model's, each edge graph's) CUDA arena cap out of a worker's ``limit`` (0: no
    cap). With the edge step's two graphs on the device, the model keeps half and each
    graph a quarter: the worker's three sessions together stay within its share of a
    shared GPU, and a graph that needs more fails over to the CPU, not the model."""
    if not limit or not edge_graphs:
        return limit, limit
    # At least a byte each: 0 would mean no cap at all.
    return max(1, limit // 2), max(1, limit // 4)


def provider_options(providers: list[str], gpu: GpuOptions) -> list[dict[str, str]]:
    """ORT's per-provider option dicts, in the order of ``providers``."""
    options: list[dict[str, str]] = []
    for name in providers:
        if name == CUDA:
            cuda = {
                "device_id": str(gpu.device_id),
                "cudnn_conv_algo_search": gpu.cudnn_conv_algo_search,
                "arena_extend_strategy": gpu.arena_extend_strategy,
                "do_copy_in_default_stream": "1",
            }
            if gpu.mem_limit_bytes:
                cuda["gpu_mem_limit"] = str(gpu.mem_limit_bytes)
            options.append(cuda)
        elif name == TENSORRT:
            trt = {
                "device_id": str(gpu.device_id),
                "trt_fp16_enable": "1" if gpu.fp16 else "0",
                "trt_max_workspace_size": str(gpu.tensorrt_workspace_bytes),
            }
            if gpu.tensorrt_cache_dir is not None:
                # Building an engine takes minutes; the caches make later starts seconds.
                cache = str(gpu.tensorrt_cache_dir)
                trt |= {
                    "trt_engine_cache_enable": "1",
                    "trt_engine_cache_path": cache,
                    "trt_timing_cache_enable": "1",
                    "trt_timing_cache_path": cache,
                }
            options.append(trt)
        else:
            options.append({})
    return options


def check_provider_used(requested: str, gpu: GpuOptions, active: list[str], name: str) -> None:
    """Fail loudly when ORT quietly fell back from a GPU provider the settings demanded."""
    first = active[0] if active else "nothing"
    if gpu.tensorrt and first != TENSORRT:
        raise ProviderUnavailable(
            f"BGSVC_TENSORRT=true but the session for {name!r} fell back to {first} "
            "(TensorRT libraries not usable, or the model is not supported by TensorRT)."
        )
    if requested == "cuda" and first not in GPU_PROVIDERS:
        raise ProviderUnavailable(
            f"BGSVC_PROVIDER=cuda but the session for {name!r} fell back to "
            f"{first} (CUDA or cuDNN libraries not usable)."
        )
