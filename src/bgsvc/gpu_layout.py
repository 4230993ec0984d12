"""How a CUDA host is laid out: which GPUs the workers use, how many workers and
concurrent inferences, and each worker's device and memory share (docs/gpu.md).

Runs in gunicorn's arbiter, so it must never import onnxruntime (a forked worker of a
process that loaded it aborts at exit, see bgsvc.inference.preflight): it asks NVML
(``pynvml``, the ``gpu`` extra) and the installed distributions instead.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

from bgsvc.config import Settings

# Numbers behind these defaults (docs/gpu.md): on an H100, 4 threads calling run() on one
# CUDA session gave 204 img/s, while several processes sharing the GPU time-slice it
# (138-182 img/s); but the decode/encode stages need more than one process's GIL.
CUDA_MAX_CONCURRENCY = 4
CUDA_WORKERS_PER_GPU = 2
# What the arenas of the workers sharing one GPU may take together; the rest is left for
# CUDA contexts, cuDNN/cuBLAS workspaces and other processes, which the arena does not count.
SHARED_MEMORY_FRACTION = 0.8


@dataclass(frozen=True)
class GpuHost:
    """The GPUs this host's workers use, and the smallest memory among them (0: unknown)."""

    devices: tuple[int, ...]
    memory_bytes: int = 0


def _gpu_wheel_installed() -> bool:
    # Metadata only: importing onnxruntime here is exactly what must not happen.
    try:
        importlib.metadata.distribution("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _nvml_inventory(nvml: ModuleType | None) -> tuple[int, int]:
    """(device count, smallest device memory in bytes) from NVML; (0, 0) without it."""
    try:
        if nvml is None:
            import pynvml

            nvml = pynvml
        nvml.nvmlInit()
    except Exception:  # no binding, no library, no driver: not a usable GPU host
        return 0, 0
    try:
        count = int(nvml.nvmlDeviceGetCount())
        totals = [
            int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).total)
            for i in range(count)
        ]
        return count, min(totals, default=0)
    except Exception:
        return 0, 0
    finally:
        # The workers forked after this use CUDA, not this process's NVML handles.
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _visible_count(mask: str) -> int:
    # CUDA renumbers the devices it is shown from 0; NVML ignores the mask and counts all.
    return len([v for v in mask.split(",") if v.strip()])


def probe(settings: Settings, nvml: ModuleType | None = None) -> GpuHost | None:
    """The host's GPU layout, or None when the workers will run on the CPU (provider
    ``cpu``, no onnxruntime-gpu with ``auto``, or no GPU that NVML can see)."""
    if settings.provider == "cpu":
        return None
    if settings.provider == "auto" and not _gpu_wheel_installed():
        return None
    count, memory = _nvml_inventory(nvml)
    if settings.cuda_visible_devices is not None:
        count = _visible_count(settings.cuda_visible_devices)
    devices = settings.gpu_device_ids or tuple(range(count))
    if not devices:
        if settings.provider != "cuda":
            return None
        # Asked for CUDA without NVML to count GPUs: trust the device setting; the worker's
        # own provider check fails clearly if there is no such GPU.
        devices = (settings.cuda_device_id,)
    return GpuHost(devices, memory)


def worker_count(settings: Settings, host: GpuHost | None) -> int:
    """BGSVC_WORKERS (or WEB_CONCURRENCY) when given; else 2 per GPU on a CUDA host and the
    CPU default otherwise."""
    if "workers" in settings.model_fields_set or host is None:
        return settings.workers
    return CUDA_WORKERS_PER_GPU * len(host.devices)


def max_concurrency(settings: Settings, on_cuda: bool) -> int:
    """BGSVC_MAX_CONCURRENCY, or its provider-dependent default when it is 0."""
    if settings.max_concurrency:
        return settings.max_concurrency
    return CUDA_MAX_CONCURRENCY if on_cuda else 1


def lowest_free_slot(taken: Iterable[int]) -> int:
    """The smallest slot number no live worker holds: a replacement worker gets the slot
    (and so the GPU) of the one it replaces."""
    used = set(taken)
    slot = 0
    while slot in used:
        slot += 1
    return slot


def device_for(slot: int, host: GpuHost) -> int:
    """Worker slot i runs on device i mod n: workers spread evenly over the GPUs."""
    return host.devices[slot % len(host.devices)]


def memory_limit(settings: Settings, host: GpuHost, workers: int) -> int:
    """The CUDA arena limit of one worker: BGSVC_CUDA_MEM_LIMIT_BYTES when given; else,
    when several workers share a GPU, their share of SHARED_MEMORY_FRACTION of it, so one
    worker's arena cannot starve the others; 0 (no limit) for a GPU of its own."""
    if "cuda_mem_limit_bytes" in settings.model_fields_set:
        return settings.cuda_mem_limit_bytes
    sharing = math.ceil(workers / len(host.devices))
    if sharing <= 1 or not host.memory_bytes:
        return 0
    return int(host.memory_bytes * SHARED_MEMORY_FRACTION) // sharing


def worker_environment(
    settings: Settings, host: GpuHost, workers: int, slot: int
) -> dict[str, str]:
    """BGSVC_* variables a forked worker in ``slot`` sets for its own settings."""
    env = {
        "BGSVC_CUDA_DEVICE_ID": str(device_for(slot, host)),
        # The worker's intra-op threads default to cores // workers: the real count.
        "BGSVC_WORKERS": str(workers),
    }
    limit = memory_limit(settings, host, workers)
    if limit:
        env["BGSVC_CUDA_MEM_LIMIT_BYTES"] = str(limit)
    return env
