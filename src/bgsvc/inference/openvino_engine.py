"""The OpenVINO engine: the model compiled once per process for the CPU, at a chosen
inference precision (f32, bf16 or f16; which one is decided in ``inference.precision``).

OpenVINO (the ``openvino`` package, not onnxruntime-openvino, which would replace the
``onnxruntime`` module) runs bf16 and f16 natively on CPUs that have them (AVX-512 BF16 /
AMX, AVX-512 FP16): on this project's 2-core Xeon the default model's forward pass takes
0.19 s in bf16 against 0.86 s in ONNX Runtime's fp32 (benchmarks/RESULTS.md).

It runs the float model pruned to the output the service reads (``wrap.pruned_copy``),
given the resized uint8 pixels and normalising them in the graph (``with_pixel_input``);
the resizes stay outside (``imaging.resize``): the wrapped uint8 graph compiles, but
OpenVINO's antialiased Resize differs from ONNX Runtime's and Pillow's (IoU 0.973 on
scikit-image's rocket even at f32), while the pruned graph agrees with ONNX Runtime at
f32 to IoU 1.0.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bgsvc.errors import ModelError
from bgsvc.imaging.resize import model_input
from bgsvc.inference.base import BaseEngine, EngineChoice
from bgsvc.inference.registry import ModelSpec, Profile

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "bf16", "f16")
DEVICE = "CPU"


@dataclass(frozen=True)
class CompileOptions:
    """How the model is compiled: precision, threads, and one infer request per inference
    the process admits at once (the scheduler's bound)."""

    precision: str = "f32"
    threads: int = 1
    requests: int = 1
    # OpenVINO's compiled-model cache: a restart imports the blob instead of compiling.
    cache_dir: Path | None = None


def available() -> bool:
    """Whether the openvino package imports (a broken install counts as absent)."""
    try:
        import openvino  # noqa: F401
    except Exception:  # a broken native library raises more than ImportError
        return False
    return True


def version() -> str:
    """The installed OpenVINO version, for the stored trials' key and the bench's report."""
    import openvino as ov

    return str(ov.__version__).split("-")[0]


def native_precisions() -> list[str]:
    """The reduced precisions this CPU executes natively, per OpenVINO's own report."""
    import openvino as ov

    capabilities = set(ov.Core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
    return [p for p, cap in (("bf16", "BF16"), ("f16", "FP16")) if cap in capabilities]


def with_pixel_input(model: Any, profile: Profile) -> Any:
    """``model`` taking the resized uint8 pixels (NHWC) and normalising them itself with
    the profile's mean and std (OpenVINO's PrePostProcessor): the CPU stage then has no
    float tensor to build, and the compiled graph folds the arithmetic into its first
    layer's input."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(list(profile.mean)).scale(
        list(profile.std)
    )
    return ppp.build()


def compile_model(path: Path, options: CompileOptions, profile: Profile) -> Any:
    """The CompiledModel of ``path`` with ``profile``'s normalisation in front
    (``with_pixel_input``); raises ModelError when OpenVINO cannot compile it."""
    import openvino as ov

    if options.precision not in PRECISIONS:
        raise ModelError(f"OpenVINO precision {options.precision!r} is not one of {PRECISIONS}.")
    core = ov.Core()
    streams = max(1, min(options.requests, options.threads))
    if options.cache_dir is not None:
        # OpenVINO's cache key leaves out the precision hint (measured with 2026.4: a bf16
        # compile imported the f16 blob and ran at f16's speed), so each configuration
        # gets a directory of its own.
        blobs = options.cache_dir / f"{options.precision}-t{options.threads}-s{streams}"
        blobs.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(blobs)})
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": options.precision,
        "INFERENCE_NUM_THREADS": options.threads,
        "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
        "NUM_STREAMS": streams,
        # OpenVINO pins threads within its own process and knows nothing of the other
        # worker processes on the host: the OS scheduler places them all.
        "ENABLE_CPU_PINNING": False,
    }
    try:
        model = with_pixel_input(core.read_model(str(path)), profile)
        return core.compile_model(model, DEVICE, config)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise ModelError(f"OpenVINO could not compile {path.name}: {exc}") from exc


class OpenVinoEngine(BaseEngine):
    """A model compiled by OpenVINO: ``predict`` maps RGB pixels to a uint8 matte."""

    def __init__(
        self,
        spec: ModelSpec,
        compiled: Any,
        load_seconds: float,
        *,
        version: str,
        choice: EngineChoice,
        requests: int = 1,
    ):
        super().__init__(spec, load_seconds, version, choice)
        self.compiled = compiled
        self.providers = [f"OpenVINO:{DEVICE}"]
        inputs = compiled.inputs
        if len(inputs) != 1:
            raise ModelError(f"Model {spec.name!r} has {len(inputs)} inputs; OpenVINO runs one.")
        self._check_input_shape(inputs[0].get_partial_shape())
        outputs = compiled.outputs
        # A pruned file has one output; an unpruned one (no model directory) has them all.
        index = 0 if len(outputs) == 1 else spec.profile.output_index
        if index >= len(outputs):
            raise ModelError(f"Model {spec.name!r} has no output #{index}.")
        self._output = outputs[index]
        # Each admitted inference takes a request and gives it back; an infer call drops
        # the GIL, so the scheduler's threads run them in parallel across the streams.
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(max(1, requests)):
            self._requests.put(compiled.create_infer_request())

    @classmethod
    def load(
        cls, spec: ModelSpec, path: Path, options: CompileOptions, *, version: str, reason: str
    ) -> OpenVinoEngine:
        """Compile ``path`` (a verified, prepared file) at ``options.precision``."""
        started = time.perf_counter()
        compiled = compile_model(path, options, spec.profile)
        return cls(
            spec,
            compiled,
            time.perf_counter() - started,
            version=version,
            choice=EngineChoice("openvino", options.precision, "cpu", reason),
            requests=options.requests,
        )

    def _check_input_shape(self, shape: Any) -> None:
        size = self.spec.profile.input_size
        # NHWC: the pixels' height and width (with_pixel_input).
        dims = [d.get_length() for d in list(shape)[1:3] if d.is_static]
        if any(d != size for d in dims):
            raise ModelError(
                f"Model {self.spec.name!r} expects {dims} inputs but its profile says "
                f"{size}; set input_size for this custom model."
            )

    def preprocess(
        self, rgb: Image.Image | np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The resized uint8 pixels as a 1xHxWx3 batch: the graph normalises them."""
        return model_input(rgb, self.spec.profile.input_size)[None]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """The forward pass: the model's chosen output for a 1xHxWx3 uint8 batch."""
        request = self._requests.get()
        try:
            request.infer({0: tensor}, share_inputs=True)
            # A copy: the request's output buffer is reused by the next inference.
            result: np.ndarray = np.array(request.get_tensor(self._output).data, copy=True)
        finally:
            self._requests.put(request)
        return result
