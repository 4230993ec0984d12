"""What every inference engine is: a loaded model that maps RGB pixels to a uint8 matte.

The engines (ONNX Runtime in ``engine``, OpenVINO in ``openvino_engine``) differ in how
the forward pass runs; the model's pre- and post-processing (resize, normalise, output
transform, quantise, resize back) is the numpy/OpenCV code here, except that OpenVINO
normalises in its graph, and the wrapped graph (``inference.wrap``) does it all itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bgsvc.imaging.opencv import cv2
from bgsvc.imaging.resize import matte_to, model_input
from bgsvc.inference.registry import ModelSpec

# A 2 MP, 4:3 photo: the size most uploads are near.
WARMUP_SIZE = (1600, 1200)
# Bump whenever the pre- or post-processing here changes the mattes, or the edge step
# (bgsvc.imaging.edges) changes the results: it is part of every engine's version, so
# results cached by an earlier pipeline are not served.
PIPELINE_VERSION = 4


@dataclass(frozen=True)
class EngineChoice:
    """Which runtime and precision a model runs on, and why: logged once at start, shown
    by /ready and /models, exported as metric labels."""

    engine: str  # "onnxruntime" or "openvino"
    precision: str  # "f32", "bf16", "f16", "int8", or "f16-weights" (CUDA as shipped)
    device: str  # "cpu" or "cuda"
    reason: str

    def as_dict(self) -> dict[str, str]:
        """The choice as JSON-ready fields."""
        return {
            "engine": self.engine,
            "precision": self.precision,
            "device": self.device,
            "reason": self.reason,
        }


class BaseEngine:
    """The model-independent part of an engine: ``predict`` = ``postprocess(run(preprocess))``.

    Subclasses set ``graph_pipeline`` and implement ``run``; ``providers`` names what runs
    the forward pass (ONNX Runtime's providers, or ``OpenVINO:CPU``)."""

    graph_pipeline: bool = False

    def __init__(self, spec: ModelSpec, load_seconds: float, version: str, choice: EngineChoice):
        self.spec = spec
        self.load_seconds = load_seconds
        # Identifies weights, variant and pipeline in cache keys: results differ by each.
        self.version = f"{version}:pipeline{PIPELINE_VERSION}"
        self.choice = choice
        self.providers: list[str] = []
        profile = spec.profile
        mean = np.asarray(profile.mean, dtype=np.float32)
        inv_std = (1.0 / np.asarray(profile.std, dtype=np.float32)).astype(np.float32)
        # (x - mean) / std as x * inv_std - mean * inv_std: one converting multiply and one
        # in-place subtract per channel, on contiguous planes (benchmarks/RESULTS.md).
        self._scale = [np.float32(v) for v in inv_std]
        self._shift = [np.float32(m * v) for m, v in zip(mean, inv_std, strict=True)]

    @property
    def name(self) -> str:
        """The model's registry name."""
        return self.spec.name

    def preprocess(
        self, rgb: Image.Image | np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Resize to the model's square input (``imaging.resize.model_input``) and
        normalise to NCHW float32 (into ``out`` when given, e.g. a buffer reused across
        calls).

        With the wrapped graph, just the image's uint8 HxWx3 pixels: the graph does the rest.
        """
        if self.graph_pipeline:
            return np.asarray(rgb, dtype=np.uint8)
        size = self.spec.profile.input_size
        pixels = model_input(rgb, size)
        tensor = np.empty((1, 3, size, size), dtype=np.float32) if out is None else out
        for c, plane in enumerate(cv2.split(pixels)):
            np.multiply(plane, self._scale[c], out=tensor[0, c], dtype=np.float32)
            tensor[0, c] -= self._shift[c]
        return tensor

    def postprocess(self, raw: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
        """The raw output map to a uint8 matte at ``size`` (width, height); None: at the
        size the model made it (the edge refinement enlarges it from there)."""
        if self.graph_pipeline:
            # The graph made the matte already, at the size of the image it was given.
            matte = np.asarray(raw, dtype=np.uint8)
            return matte if size is None else matte_to(matte, size)
        pred: np.ndarray = np.asarray(raw, dtype=np.float32).reshape(raw.shape[-2], raw.shape[-1])
        transform = self.spec.profile.output_transform
        if transform == "minmax":
            lo, hi = float(pred.min()), float(pred.max())
            pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
        elif transform == "sigmoid":
            pred = (1.0 / (1.0 + np.exp(-pred))).astype(np.float32)
        # Quantise at the model's resolution, then resize 8-bit: a quarter of the bytes
        # to move, within one level of the float resize.
        scaled = np.multiply(pred, 255.0, dtype=np.float32)
        scaled += 0.5
        np.clip(scaled, 0.0, 255.0, out=scaled)
        matte = scaled.astype(np.uint8)
        return matte if size is None else matte_to(matte, size)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """The forward pass (the model's chosen output), implemented per engine."""
        raise NotImplementedError

    def predict(self, rgb: Image.Image) -> np.ndarray:
        """Alpha matte (uint8, HxW) for an RGB image, at the image's size."""
        return self.postprocess(self.run(self.preprocess(rgb)), rgb.size)

    def warmup(self) -> float:
        """One inference on a blank photo-sized image, so the first request does not pay
        for setup (a non-square size larger than the model's input: the wrapped graph's
        resizes and their buffers are exercised as a real upload would)."""
        started = time.perf_counter()
        self.predict(Image.new("RGB", WARMUP_SIZE, (128, 128, 128)))
        return time.perf_counter() - started
