"""Load and warm every allow-listed model for one process."""

from __future__ import annotations

import logging

from bgsvc import gpu_layout
from bgsvc.config import Settings
from bgsvc.inference.base import BaseEngine
from bgsvc.inference.engine import RuntimeOptions
from bgsvc.inference.factory import load_engine
from bgsvc.inference.prepare import prepared_dir
from bgsvc.inference.providers import GpuOptions, memory_limits
from bgsvc.inference.registry import resolve

log = logging.getLogger(__name__)


def runtime_options(settings: Settings) -> RuntimeOptions:
    """Session options from settings."""
    prepared = prepared_dir(settings.model_dir)
    return RuntimeOptions(
        provider=settings.provider,
        engine=settings.engine,
        precision=settings.precision,
        # The scheduler's bound (app.py sizes it the same way): one infer request each.
        concurrency=gpu_layout.max_concurrency(settings, gpu_layout.probe(settings) is not None),
        openvino_cache_dir=settings.openvino_cache_dir,
        intra_op_threads=settings.effective_intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        allow_spinning=settings.allow_spinning,
        prepared_dir=prepared,
        cpu_fp32=settings.cpu_fp32,
        cpu_int8=settings.cpu_int8,
        int8_calibration_dir=settings.int8_calibration_dir,
        cache_optimized=settings.cache_optimized_model,
        graph_pipeline=settings.graph_pipeline,
        gpu=GpuOptions(
            device_id=settings.cuda_device_id,
            cudnn_conv_algo_search=settings.cuda_cudnn_conv_algo_search,
            arena_extend_strategy=settings.cuda_arena_extend_strategy,
            mem_limit_bytes=memory_limits(
                settings.cuda_mem_limit_bytes, settings.edge_step != "cpu"
            )[0],
            io_binding=settings.io_binding,
            fp16=settings.gpu_fp16,
            tensorrt=settings.tensorrt,
            tensorrt_cache_dir=settings.tensorrt_cache_dir or prepared / "trt",
        ),
    )


def load_engines(settings: Settings) -> dict[str, BaseEngine]:
    """One warmed engine per allow-listed model; raises ModelError with the fix on failure."""
    runtime = runtime_options(settings)
    engines: dict[str, BaseEngine] = {}
    for name in settings.models:
        spec = resolve(name, settings)
        engine = load_engine(spec, spec.file_in(settings.model_dir), runtime)
        warm = engine.warmup() if settings.warmup else 0.0
        engine.load_seconds += warm
        choice = engine.choice
        log.info(
            "loaded model %s (licence: %s): %s %s on %s in %.2fs (warm-up %.2fs, %d threads); "
            "why: %s",
            name,
            spec.license,
            choice.engine,
            choice.precision,
            engine.providers[0],
            engine.load_seconds,
            warm,
            runtime.intra_op_threads,
            choice.reason,
        )
        engines[name] = engine
    return engines


def preflight(settings: Settings) -> None:
    """Cheap start-up checks, so a misconfigured node fails with one clear line before it
    binds a port: known models, files present and intact, provider available."""
    import onnxruntime as ort

    from bgsvc.inference.fetch import verify
    from bgsvc.inference.providers import choose_providers

    choose_providers(settings.provider, ort.get_available_providers(), tensorrt=settings.tensorrt)
    for name in settings.models:
        spec = resolve(name, settings)
        verify(spec, spec.file_in(settings.model_dir))
