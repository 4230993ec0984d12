"""The ONNX Runtime engine: one session per model per process (CUDA, TensorRT or CPU)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from bgsvc.errors import ModelError
from bgsvc.inference import prepare, wrap
from bgsvc.inference.base import BaseEngine, EngineChoice
from bgsvc.inference.fetch import verify
from bgsvc.inference.providers import (
    CPU,
    GPU_PROVIDERS,
    TENSORRT,
    GpuOptions,
    check_provider_used,
    choose_providers,
    provider_options,
)
from bgsvc.inference.registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built: provider, explicit thread counts (ORT ignores OMP_*) and the
    model preparation that the benchmarks showed to pay (benchmarks/RESULTS.md)."""

    provider: Literal["auto", "cpu", "cuda"] = "auto"
    # Which engine and precision (inference.factory); the defaults here keep ONNX Runtime.
    engine: Literal["auto", "onnxruntime", "openvino"] = "onnxruntime"
    precision: Literal["auto", "f32", "bf16", "f16"] = "auto"
    # Inferences the process admits at once: OpenVINO keeps one infer request for each.
    concurrency: int = 1
    # OpenVINO's compiled models and precision trials; None: <prepared_dir>/openvino.
    openvino_cache_dir: Path | None = None
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Worker threads busy-wait between ops; off, an idle process does not burn its cores.
    allow_spinning: bool = False
    # Where derived files (float32 copy, optimised graph) are cached; None: derive nothing.
    prepared_dir: Path | None = None
    cpu_fp32: bool = True
    # Static int8 QDQ copy on the CPU (opt-in; see inference.quantize).
    cpu_int8: bool = False
    int8_calibration_dir: Path | None = None
    cache_optimized: bool = True
    # Resize, normalisation and the output transform inside the ONNX graph (inference.wrap).
    graph_pipeline: bool = True
    gpu: GpuOptions = field(default_factory=GpuOptions)


def session_options(runtime: RuntimeOptions) -> ort.SessionOptions:
    """Threads, sequential execution, full graph optimisation and spinning policy."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.intra_op_threads
    options.inter_op_num_threads = runtime.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    spin = "1" if runtime.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def model_file_for(
    spec: ModelSpec, path: Path, key: str, runtime: RuntimeOptions, providers: list[str]
) -> Path:
    """The file the session loads: the verified original, or its cached float32 / int8
    copy when the CPU runs it (or TensorRT, which wants fp32 graphs and applies its own
    fp16); wrapped with its pre/post-processing when ``runtime.graph_pipeline``."""
    if runtime.prepared_dir is None:
        return path
    chosen = _variant_for(spec, path, key, runtime, providers[0])
    if not runtime.graph_pipeline:
        return chosen
    try:
        # Wrapped after quantising: calibration feeds the unwrapped float model.
        return wrap.wrapped_copy(chosen, key, runtime.prepared_dir, spec.profile)
    except ModelError as exc:
        log.warning("could not wrap %s (%s); running numpy/OpenCV pre/post", chosen.name, exc)
    except OSError as exc:
        log.warning("could not cache the wrapped %s (%s); running it unwrapped", chosen.name, exc)
    return chosen


def _variant_for(
    spec: ModelSpec, path: Path, key: str, runtime: RuntimeOptions, first: str
) -> Path:
    assert runtime.prepared_dir is not None
    if first == CPU:
        wanted = runtime.cpu_fp32 or runtime.cpu_int8
    elif first == TENSORRT:
        wanted = True
    else:  # CUDA: the fp16 weights as shipped when fp16 is on, else the fp32 copy
        wanted = not runtime.gpu.fp16
    if not wanted:
        return path
    try:
        fp32 = prepare.fp32_copy(path, key, runtime.prepared_dir)
        if first == CPU and runtime.cpu_int8:
            return prepare.int8_copy(
                fp32, key, runtime.prepared_dir, spec.profile, runtime.int8_calibration_dir
            )
        return fp32
    except OSError as exc:
        log.warning("could not cache a prepared copy of %s (%s); using it as is", path, exc)
        return path


def _precision_of(model_file: Path, runtime: RuntimeOptions, first: str) -> str:
    if first == TENSORRT:
        return "f16" if runtime.gpu.fp16 else "f32"
    if first == CPU:
        return "int8" if "-int8-" in model_file.name else "f32"
    # CUDA runs the weights as shipped when fp16 is on (an fp16 file stays fp16).
    return "f16-weights" if runtime.gpu.fp16 else "f32"


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


class Engine(BaseEngine):
    """A model loaded in ONNX Runtime: ``predict`` maps RGB pixels to a uint8 alpha matte
    of the same size."""

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        load_seconds: float,
        *,
        io_binding: bool = False,
        version: str | None = None,
        choice: EngineChoice | None = None,
    ):
        providers: list[str] = session.get_providers()
        on_cuda = providers[0] in GPU_PROVIDERS
        super().__init__(
            spec,
            load_seconds,
            version or spec.sha256 or spec.name,
            choice
            or EngineChoice(
                "onnxruntime", "f32", "cuda" if on_cuda else "cpu", "ONNX Runtime as configured"
            ),
        )
        self.session = session
        self.providers = providers
        first_input = session.get_inputs()[0]
        self._input = first_input.name
        self._input_dtype = np.float16 if first_input.type == "tensor(float16)" else np.float32
        # A wrapped graph (inference.wrap) takes the uint8 image and returns the matte.
        self.graph_pipeline = first_input.type == "tensor(uint8)"
        outputs = session.get_outputs()
        index = 0 if self.graph_pipeline else spec.profile.output_index
        if index >= len(outputs):
            raise ModelError(f"Model {spec.name!r} has no output #{index}.")
        # Asking for one output lets ORT skip the side outputs' final ops.
        self._output = outputs[index].name
        self._io_binding = io_binding and on_cuda

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        path: Path,
        runtime: RuntimeOptions,
        *,
        reason: str = "ONNX Runtime as configured",
    ) -> Engine:
        """Verify the file, build the session, and fail loudly on a missing accelerator;
        ``reason`` says why this engine was chosen (shown by /ready and /models)."""
        started = time.perf_counter()
        verify(spec, path)
        providers = choose_providers(
            runtime.provider, ort.get_available_providers(), tensorrt=runtime.gpu.tensorrt
        )
        key = prepare.source_key(path, spec.sha256)
        model_file = model_file_for(spec, path, key, runtime, providers)
        options = session_options(runtime)
        load_from = model_file
        optimized: Path | None = None
        if runtime.prepared_dir is not None and runtime.cache_optimized and providers == [CPU]:
            optimized = prepare.optimized_path(model_file, key, runtime.prepared_dir, CPU)
            if optimized.is_file():
                load_from = optimized
                # Already optimised: running the optimisers again would only cost start time.
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            elif _writable_dir(optimized.parent):
                partial = optimized.with_name(f".{optimized.name}.{time.time_ns()}.part")
                options.optimized_model_filepath = str(partial)
            else:
                # A read-only model directory (a container's baked-in models, run as a
                # non-root user) just means optimising at every start, not failing.
                log.info("model directory not writable; not caching the optimised graph")
        try:
            session = ort.InferenceSession(
                str(load_from),
                sess_options=options,
                providers=providers,
                provider_options=provider_options(providers, runtime.gpu),
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            if load_from != model_file:
                # A damaged cache must not take the node down: drop it and build afresh.
                log.warning("cached optimised model %s failed to load; rebuilding", load_from)
                load_from.unlink(missing_ok=True)
                return cls.load(spec, path, runtime, reason=reason)
            raise ModelError(
                f"Model {spec.name!r} at {path} could not be loaded ({exc}); it may be corrupt: "
                f"delete it and run `bgsvc models fetch {spec.name}`."
            ) from exc
        if options.optimized_model_filepath and optimized is not None:
            partial = Path(options.optimized_model_filepath)
            if partial.is_file():
                partial.replace(optimized)
        active = session.get_providers()
        check_provider_used(runtime.provider, runtime.gpu, active, spec.name)
        on_cuda = active[0] in GPU_PROVIDERS
        engine = cls(
            spec,
            session,
            time.perf_counter() - started,
            io_binding=runtime.gpu.io_binding,
            # The weights' content and the variant run (fp32 copy, int8 copy, original):
            # results differ between variants, so cached results must too.
            version=f"{key}:{model_file.name}",
            choice=EngineChoice(
                "onnxruntime",
                _precision_of(model_file, runtime, active[0]),
                "cuda" if on_cuda else "cpu",
                reason,
            ),
        )
        engine._check_input_shape()
        return engine

    def _check_input_shape(self) -> None:
        if self.graph_pipeline:
            return  # any image size: the graph resizes
        shape = self.session.get_inputs()[0].shape
        size = self.spec.profile.input_size
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if fixed and any(d != size for d in fixed):
            raise ModelError(
                f"Model {self.spec.name!r} expects {shape[2:]} inputs but its profile says "
                f"{size}; set input_size for this custom model."
            )

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """The forward pass: the model's chosen output for an NCHW tensor, or the matte
        for an image's pixels when the graph is wrapped."""
        if not self.graph_pipeline and self._input_dtype is not np.float32:
            tensor = tensor.astype(self._input_dtype)
        if self._io_binding:
            return self._run_bound(tensor)
        result: np.ndarray = self.session.run([self._output], {self._input: tensor})[0]
        return result

    def _run_bound(self, tensor: np.ndarray) -> np.ndarray:
        binding = self.session.io_binding()
        binding.bind_cpu_input(self._input, tensor)
        device = "cuda"
        binding.bind_output(self._output, device)
        self.session.run_with_iobinding(binding)
        outputs: list[Any] = binding.copy_outputs_to_cpu()
        result: np.ndarray = np.asarray(outputs[0])
        return result
