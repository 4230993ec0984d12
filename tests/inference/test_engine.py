from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bgsvc.errors import ModelError, ProviderUnavailable
from bgsvc.inference.engine import Engine, RuntimeOptions
from bgsvc.inference.providers import CPU, CUDA, choose_providers
from bgsvc.inference.registry import known_models
from tests.conftest import TINY_SIZE, subject_image


def tiny_spec(path: Path):  # type: ignore[no-untyped-def]
    from bgsvc.config import Settings

    settings = Settings(
        custom_models={"tiny": {"path": path, "profile": "imgly", "input_size": TINY_SIZE}}
    )
    return known_models(settings)["tiny"]


def test_auto_uses_cuda_only_when_available() -> None:
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]


def test_asking_for_cuda_without_it_fails_loudly() -> None:
    with pytest.raises(ProviderUnavailable, match="onnxruntime-gpu"):
        choose_providers("cuda", [CPU])


def test_engine_load_with_cuda_on_a_cpu_build_fails(tiny_model_path: Path) -> None:
    with pytest.raises(ProviderUnavailable):
        Engine.load(tiny_spec(tiny_model_path), tiny_model_path, RuntimeOptions(provider="cuda"))


def test_predict_returns_matte_at_image_size(tiny_model_path: Path) -> None:
    engine = Engine.load(tiny_spec(tiny_model_path), tiny_model_path, RuntimeOptions("cpu"))
    img = subject_image((120, 80))
    matte = engine.predict(img)
    assert matte.shape == (80, 120) and matte.dtype == np.uint8
    assert matte[40, 60] > 200  # bright disc: subject
    assert matte[2, 2] < 30  # dark corner: background
    assert engine.providers[0] == CPU


def test_preprocess_follows_the_profile_normalisation(tiny_model_path: Path) -> None:
    engine = Engine.load(tiny_spec(tiny_model_path), tiny_model_path, RuntimeOptions("cpu"))
    tensor = engine.preprocess(subject_image((TINY_SIZE, TINY_SIZE)))
    assert tensor.shape == (1, 3, TINY_SIZE, TINY_SIZE)
    assert tensor[0, 0, 0, 0] == pytest.approx((20 - 128) / 256)


def test_corrupt_model_file_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="corrupt"):
        Engine.load(tiny_spec(bad), bad, RuntimeOptions("cpu"))
