"""The engine and precision the default model runs on here agree with float32 on every
photo of the accuracy set and the calibration set: the quality gate, held by a test."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
from PIL import Image

from bgsvc.config import Settings
from bgsvc.inference import precision
from bgsvc.inference.engine import Engine, session_options
from bgsvc.inference.factory import load_engine
from bgsvc.inference.loader import runtime_options
from bgsvc.inference.providers import CPU
from bgsvc.inference.registry import resolve

pytestmark = pytest.mark.real_model

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def test_the_chosen_precision_agrees_with_float32_on_every_photo() -> None:
    settings = Settings(intra_op_threads=2, node_name="real", engine="auto", provider="cpu")
    spec = resolve(settings.default_model, settings)
    path = spec.file_in(settings.model_dir)
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make model` (make test does it first)")
    runtime = runtime_options(settings)
    chosen = load_engine(spec, path, runtime)
    fp32 = next(settings.model_dir.joinpath(".prepared").glob(f"{path.stem}-*-fp32.onnx"))
    session = ort.InferenceSession(
        str(fp32), sess_options=session_options(runtime), providers=[CPU]
    )
    reference = Engine(spec, session, 0.0)
    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    photos += precision.calibration_images()[0]
    worst_iou, worst_mae = 1.0, 0.0
    for photo in photos:
        iou, mae = precision.agreement(reference.predict(photo), chosen.predict(photo))
        worst_iou, worst_mae = min(worst_iou, iou), max(worst_mae, mae)
    print(f"{chosen.choice}: IoU >= {worst_iou:.4f}, MAE <= {worst_mae:.3f}")
    assert worst_iou >= precision.MIN_IOU
    assert worst_mae <= precision.MAX_MAE
    # A subject was found in each, by the chosen engine too.
    assert 0.05 < float(np.mean(chosen.predict(photos[0]) > 127)) < 0.95
