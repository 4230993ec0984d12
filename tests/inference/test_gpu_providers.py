"""GPU provider selection, options and failure messages, without a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bgsvc.config import Settings
from bgsvc.errors import ProviderUnavailable
from bgsvc.inference import engine as engine_mod
from bgsvc.inference import prepare, wrap
from bgsvc.inference.engine import Engine, RuntimeOptions, model_file_for
from bgsvc.inference.loader import runtime_options
from bgsvc.inference.providers import (
    CPU,
    CUDA,
    TENSORRT,
    GpuOptions,
    check_provider_used,
    choose_providers,
    memory_limits,
    provider_options,
)
from bgsvc.inference.registry import BUILTIN
from tests.inference.test_prepare import build_fp16_model

ALL = [TENSORRT, CUDA, CPU]


def test_tensorrt_goes_first_with_cuda_and_cpu_behind_it() -> None:
    assert choose_providers("auto", ALL, tensorrt=True) == [TENSORRT, CUDA, CPU]
    assert choose_providers("cuda", ALL, tensorrt=True) == [TENSORRT, CUDA, CPU]
    assert choose_providers("auto", ALL) == [CUDA, CPU]


def test_tensorrt_without_its_provider_names_the_setting_and_the_fix() -> None:
    with pytest.raises(ProviderUnavailable, match=r"BGSVC_TENSORRT=true.*onnxruntime-gpu"):
        choose_providers("auto", [CUDA, CPU], tensorrt=True)


def test_tensorrt_with_the_cpu_provider_is_a_contradiction() -> None:
    with pytest.raises(ProviderUnavailable, match="BGSVC_PROVIDER=cuda or auto"):
        choose_providers("cpu", ALL, tensorrt=True)


def test_cuda_options_carry_search_arena_and_limit() -> None:
    gpu = GpuOptions(device_id=1, cudnn_conv_algo_search="HEURISTIC", mem_limit_bytes=2_000_000_000)
    (cuda, cpu) = provider_options([CUDA, CPU], gpu)
    assert cuda["device_id"] == "1"
    assert cuda["cudnn_conv_algo_search"] == "HEURISTIC"
    assert cuda["arena_extend_strategy"] == "kSameAsRequested"
    assert cuda["gpu_mem_limit"] == "2000000000"
    assert cpu == {}
    (unlimited,) = provider_options([CUDA], GpuOptions())
    assert "gpu_mem_limit" not in unlimited
    assert unlimited["cudnn_conv_algo_search"] == "EXHAUSTIVE"


def test_tensorrt_options_put_engine_and_timing_caches_on_disk(tmp_path: Path) -> None:
    gpu = GpuOptions(tensorrt=True, tensorrt_cache_dir=tmp_path / "trt", fp16=True)
    trt, cuda, _ = provider_options([TENSORRT, CUDA, CPU], gpu)
    assert trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_timing_cache_enable"] == "1"
    assert trt["trt_timing_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_fp16_enable"] == "1"
    assert "cudnn_conv_algo_search" in cuda
    (no_cache,) = provider_options([TENSORRT], GpuOptions(fp16=False))
    assert "trt_engine_cache_enable" not in no_cache
    assert no_cache["trt_fp16_enable"] == "0"


def test_quiet_fallback_from_a_demanded_gpu_is_an_error() -> None:
    with pytest.raises(ProviderUnavailable, match="fell back to CPUExecutionProvider"):
        check_provider_used("cuda", GpuOptions(), [CPU], "m")
    with pytest.raises(ProviderUnavailable, match="BGSVC_TENSORRT=true"):
        check_provider_used("auto", GpuOptions(tensorrt=True), [CUDA, CPU], "m")
    check_provider_used("cuda", GpuOptions(), [CUDA, CPU], "m")
    check_provider_used("cuda", GpuOptions(tensorrt=True), [TENSORRT, CUDA, CPU], "m")
    check_provider_used("auto", GpuOptions(), [CPU], "m")  # auto may land on the CPU


def test_session_fallback_is_caught_at_load(
    tiny_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A build that lists CUDA but cannot start it (no driver, no cuDNN): ORT logs and
    # quietly builds a CPU session instead. Simulated by a session factory that does so.
    real_session = engine_mod.ort.InferenceSession

    def falling_back(path: str, sess_options: Any = None, **_: Any) -> Any:
        return real_session(path, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(engine_mod.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(engine_mod.ort, "InferenceSession", falling_back)
    from tests.inference.test_engine import tiny_spec

    with pytest.raises(ProviderUnavailable, match="fell back"):
        Engine.load(tiny_spec(tiny_model_path), tiny_model_path, RuntimeOptions("cuda"))


def test_model_file_per_provider(tmp_path: Path) -> None:
    src = build_fp16_model(tmp_path / "half.onnx")
    spec = BUILTIN["imgly-medium"]
    prepared = tmp_path / "prepared"
    runtime = RuntimeOptions("auto", prepared_dir=prepared, graph_pipeline=False)
    key = prepare.source_key(src, spec.sha256)
    cpu_file = model_file_for(spec, src, key, runtime, [CPU])
    assert cpu_file.name.endswith("-fp32.onnx")
    # CUDA runs the shipped fp16 weights; TensorRT takes fp32 and applies its own fp16.
    assert model_file_for(spec, src, key, runtime, [CUDA, CPU]) == src
    assert model_file_for(spec, src, key, runtime, [TENSORRT, CUDA, CPU]) == cpu_file
    no_fp16 = RuntimeOptions(
        "auto", prepared_dir=prepared, gpu=GpuOptions(fp16=False), graph_pipeline=False
    )
    assert model_file_for(spec, src, key, no_fp16, [CUDA, CPU]) == cpu_file
    assert model_file_for(spec, src, key, RuntimeOptions("auto"), [CPU]) == src
    # The wrapped graph wraps whichever variant the provider runs.
    wrapped = RuntimeOptions("auto", prepared_dir=prepared)
    for providers, variant in [([CPU], cpu_file), ([CUDA, CPU], src)]:
        chosen = model_file_for(spec, src, key, wrapped, providers)
        assert chosen == wrap.wrapped_path(variant, key, prepared, spec.profile)


def test_io_binding_is_only_used_on_a_gpu_provider(tiny_model_path: Path) -> None:
    from tests.inference.test_engine import tiny_spec

    engine = Engine.load(
        tiny_spec(tiny_model_path), tiny_model_path, RuntimeOptions("cpu", gpu=GpuOptions())
    )
    assert engine._io_binding is False
    tensor = np.zeros((1, 3, 32, 32), np.float32)
    assert engine.run(tensor).shape == (1, 1, 32, 32)


def test_settings_reach_the_runtime_options(tmp_path: Path) -> None:
    settings = Settings(
        model_dir=tmp_path,
        cuda_device_id=2,
        cuda_cudnn_conv_algo_search="DEFAULT",
        cuda_arena_extend_strategy="kNextPowerOfTwo",
        cuda_mem_limit_bytes=123,
        # The model's cap is the whole of it only with the edge step on the CPU.
        edge_step="cpu",
        io_binding=False,
        gpu_fp16=False,
        tensorrt=True,
        allow_spinning=True,
        cpu_fp32=False,
        cache_optimized_model=False,
    )
    runtime = runtime_options(settings)
    assert runtime.prepared_dir == tmp_path / ".prepared"
    assert runtime.allow_spinning and not runtime.cpu_fp32 and not runtime.cache_optimized
    gpu = runtime.gpu
    assert (gpu.device_id, gpu.cudnn_conv_algo_search, gpu.arena_extend_strategy) == (
        2,
        "DEFAULT",
        "kNextPowerOfTwo",
    )
    assert (gpu.mem_limit_bytes, gpu.io_binding, gpu.fp16, gpu.tensorrt) == (
        123,
        False,
        False,
        True,
    )
    assert gpu.tensorrt_cache_dir == tmp_path / ".prepared" / "trt"


def test_with_the_edge_graphs_on_the_device_the_sessions_share_the_workers_cap(
    tmp_path: Path,
) -> None:
    assert memory_limits(0, True) == (0, 0)  # a GPU of its own: no cap for anyone
    assert memory_limits(8_000, False) == (8_000, 8_000)
    model, graph = memory_limits(8_000, True)
    assert (model, graph) == (4_000, 2_000)
    assert model + 2 * graph <= 8_000
    assert memory_limits(3, True) == (1, 1)  # never 0, which would mean no cap
    for step, expected in (("auto", 4_000), ("graph", 4_000), ("cpu", 8_000)):
        settings = Settings(model_dir=tmp_path, cuda_mem_limit_bytes=8_000, edge_step=step)
        assert runtime_options(settings).gpu.mem_limit_bytes == expected
