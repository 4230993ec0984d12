"""One ONNX Runtime session per model per process, with the model's pre/post-processing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from PIL import Image

from bgsvc.errors import ModelError, ProviderUnavailable
from bgsvc.inference.fetch import verify
from bgsvc.inference.registry import ModelSpec

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built: provider and explicit thread counts (ORT ignores OMP_*)."""

    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = 1
    inter_op_threads: int = 1


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """Providers to ask ORT for; raises ProviderUnavailable when CUDA was demanded but absent."""
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise ProviderUnavailable(
                "BGSVC_PROVIDER=cuda but this onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use "
                "BGSVC_PROVIDER=cpu."
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


class Engine:
    """A loaded model: ``predict`` maps RGB pixels to a uint8 alpha matte of the same size."""

    def __init__(self, spec: ModelSpec, session: ort.InferenceSession, load_seconds: float):
        self.spec = spec
        self.session = session
        self.load_seconds = load_seconds
        self.providers: list[str] = session.get_providers()
        self._input = session.get_inputs()[0].name
        outputs = session.get_outputs()
        index = spec.profile.output_index
        if index >= len(outputs):
            raise ModelError(f"Model {spec.name!r} has no output #{index}.")
        # Asking for one output lets ORT skip the side outputs' final ops.
        self._output = outputs[index].name
        profile = spec.profile
        self._mean = np.asarray(profile.mean, dtype=np.float32)
        self._inv_std = (1.0 / np.asarray(profile.std, dtype=np.float32)).astype(np.float32)

    @property
    def name(self) -> str:
        """The model's registry name."""
        return self.spec.name

    @classmethod
    def load(cls, spec: ModelSpec, path: Path, runtime: RuntimeOptions) -> Engine:
        """Verify the file, build the session, and fail loudly on a missing accelerator."""
        started = time.perf_counter()
        verify(spec, path)
        providers = choose_providers(runtime.provider, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = runtime.intra_op_threads
        options.inter_op_num_threads = runtime.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            raise ModelError(
                f"Model {spec.name!r} at {path} could not be loaded ({exc}); it may be corrupt: "
                f"delete it and run `bgsvc models fetch {spec.name}`."
            ) from exc
        if runtime.provider == "cuda" and session.get_providers()[0] != CUDA:
            raise ProviderUnavailable(
                f"BGSVC_PROVIDER=cuda but the session for {spec.name!r} fell back to "
                f"{session.get_providers()[0]} (CUDA or cuDNN libraries not usable)."
            )
        engine = cls(spec, session, time.perf_counter() - started)
        engine._check_input_shape()
        return engine

    def _check_input_shape(self) -> None:
        shape = self.session.get_inputs()[0].shape
        size = self.spec.profile.input_size
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if fixed and any(d != size for d in fixed):
            raise ModelError(
                f"Model {self.spec.name!r} expects {shape[2:]} inputs but its profile says "
                f"{size}; set input_size for this custom model."
            )

    def preprocess(self, rgb: Image.Image) -> np.ndarray:
        """Resize to the model's square input (bilinear) and normalise to NCHW float32."""
        size = self.spec.profile.input_size
        resized = rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
        tensor = np.empty((1, 3, size, size), dtype=np.float32)
        for c in range(3):
            np.subtract(pixels[:, :, c], self._mean[c], out=tensor[0, c])
            tensor[0, c] *= self._inv_std[c]
        return tensor

    def postprocess(self, raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The raw output map to a uint8 matte at ``size`` (width, height)."""
        pred = np.asarray(raw, dtype=np.float32).reshape(raw.shape[-2], raw.shape[-1])
        transform = self.spec.profile.output_transform
        if transform == "minmax":
            lo, hi = float(pred.min()), float(pred.max())
            pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
        elif transform == "sigmoid":
            pred = 1.0 / (1.0 + np.exp(-pred))
        matte = Image.fromarray(pred, "F")
        if matte.size != size:
            matte = matte.resize(size, Image.BILINEAR)
        out = np.asarray(matte, dtype=np.float32) * 255.0 + 0.5
        return np.clip(out, 0.0, 255.0).astype(np.uint8)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """The bare forward pass: the model's chosen output for an NCHW tensor."""
        result: np.ndarray = self.session.run([self._output], {self._input: tensor})[0]
        return result

    def predict(self, rgb: Image.Image) -> np.ndarray:
        """Alpha matte (uint8, HxW) for an RGB image, at the image's size."""
        return self.postprocess(self.run(self.preprocess(rgb)), rgb.size)

    def warmup(self) -> float:
        """One inference on a blank image, so the first request does not pay for setup."""
        started = time.perf_counter()
        size = self.spec.profile.input_size
        self.predict(Image.new("RGB", (size, size), (128, 128, 128)))
        return time.perf_counter() - started
