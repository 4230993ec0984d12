from __future__ import annotations

from pathlib import Path

import pytest

from bgsvc.config import Settings
from bgsvc.errors import ModelError, ModelNotAvailable
from bgsvc.inference.registry import BUILTIN, known_models, resolve, select


def test_default_model_is_the_imgly_medium_isnet() -> None:
    spec = BUILTIN[Settings().default_model]
    assert spec.name == "imgly-medium"
    assert spec.size == 88_188_479
    assert spec.profile.input_size == 1024
    assert spec.profile.mean == (128.0, 128.0, 128.0)
    assert spec.profile.std == (256.0, 256.0, 256.0)


def test_custom_model_plugs_in_with_a_profile(tmp_path: Path) -> None:
    settings = Settings(
        custom_models={"mine": {"path": tmp_path / "m.onnx", "profile": "u2net", "input_size": 512}}
    )
    spec = known_models(settings)["mine"]
    assert spec.source == "file"
    assert spec.profile.input_size == 512
    assert spec.profile.output_transform == "minmax"
    assert spec.file_in(Path("/elsewhere")) == tmp_path / "m.onnx"


def test_unknown_profile_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(custom_models={"mine": {"path": tmp_path / "m.onnx", "profile": "nope"}})
    with pytest.raises(ModelError, match="unknown profile"):
        known_models(settings)


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ModelError, match="imgly-medium"):
        resolve("nope", Settings())


def test_requests_may_only_pick_allow_listed_models() -> None:
    settings = Settings(models=["u2net"])
    assert settings.models == ["imgly-medium", "u2net"]
    assert select(None, settings) == "imgly-medium"
    assert select("u2net", settings) == "u2net"
    with pytest.raises(ModelNotAvailable):
        select("/etc/passwd", settings)
    with pytest.raises(ModelNotAvailable):
        select("birefnet-general", settings)
