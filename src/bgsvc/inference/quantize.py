"""A static int8 (QDQ) copy of a float32 model, calibrated on real photographs.

Measured on the default model (benchmarks/RESULTS.md): about 1.5x faster on a CPU with
int8 dot-product instructions, with mattes agreeing with float32 at IoU(alpha>0.5)
>= 0.98 on held-out photos. Opt-in (``BGSVC_CPU_INT8``), because mattes do change a
little and the speed-up depends on the CPU's int8 support.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bgsvc.errors import ModelError
from bgsvc.inference.registry import Profile

log = logging.getLogger(__name__)

CALIBRATION_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
# scikit-image's bundled photographs (a dev dependency): used when no directory is set.
SAMPLE_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "coins")


def calibration_images(directory: Path | None) -> tuple[list[Image.Image], str]:
    """RGB calibration photos and a key naming them: every image file in ``directory``,
    else scikit-image's samples. Raises ModelError when neither is available."""
    if directory is not None:
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() in CALIBRATION_SUFFIXES)
        if not files:
            raise ModelError(f"BGSVC_INT8_CALIBRATION_DIR={directory} holds no images.")
        digest = hashlib.sha256()
        images = []
        for path in files:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        return images, digest.hexdigest()[:12]
    try:
        from skimage import data as samples
    except ImportError:
        raise ModelError(
            "BGSVC_CPU_INT8=true needs calibration photos: set BGSVC_INT8_CALIBRATION_DIR to "
            "a folder of typical input photos (10-50 JPEGs), or install scikit-image."
        ) from None
    images = [Image.fromarray(getattr(samples, name)()).convert("RGB") for name in SAMPLE_PHOTOS]
    return images, "skimage"


def to_tensor(img: Image.Image, profile: Profile) -> np.ndarray:
    """The profile's preprocessing, as the engine does it."""
    size = profile.input_size
    pixels = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    mean = np.asarray(profile.mean, dtype=np.float32)
    std = np.asarray(profile.std, dtype=np.float32)
    chw = ((pixels - mean) / std).transpose(2, 0, 1)
    return np.ascontiguousarray(chw[None], dtype=np.float32)


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over in-memory tensors."""

    def __init__(self, input_name: str, tensors: Sequence[np.ndarray]) -> None:
        self._input = input_name
        self._tensors = list(tensors)
        self._iter: Iterator[np.ndarray] = iter(self._tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._iter, None)
        return None if tensor is None else {self._input: tensor}

    def rewind(self) -> None:
        self._iter = iter(self._tensors)


def quantize_qdq(src: Path, dst: Path, tensors: Sequence[np.ndarray]) -> None:
    """Write a static QDQ int8 copy of the float32 model ``src`` to ``dst``: Conv weights
    per channel (int8), activations per tensor (uint8) from min/max over ``tensors``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    pre = dst.with_name(f"{dst.name}.pre.onnx")
    try:
        # Shape inference and constant folding first, as ORT's quantiser recommends.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            _Reader(input_name, tensors),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            # Convolutions are nearly all of ISNet's time; quantising the rest (Resize,
            # Concat) only adds QDQ pairs.
            op_types_to_quantize=["Conv"],
        )
    finally:
        pre.unlink(missing_ok=True)
