"""The fast pre/post-processing gives the reference results (benchmarks/RESULTS.md says
how much faster it is; this says it is still right)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgsvc.inference.engine import Engine
from bgsvc.inference.registry import BUILTIN, PROFILES, ModelSpec
from tests.models import StubSession


def engine_for(profile: str, size: int = 64) -> Engine:
    from dataclasses import replace

    spec: ModelSpec = replace(
        BUILTIN["imgly-medium"], profile=replace(PROFILES[profile], input_size=size)
    )
    return Engine(spec, StubSession(size), 0.0)  # type: ignore[arg-type]


def random_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("profile", ["imgly", "isnet", "u2net"])
def test_preprocess_matches_the_reference_normalisation(profile: str) -> None:
    engine = engine_for(profile)
    img = random_image((64, 64))
    p = PROFILES[profile]
    ref = (np.asarray(img, np.float32) - np.asarray(p.mean, np.float32)) / np.asarray(
        p.std, np.float32
    )
    got = engine.preprocess(img)
    assert got.shape == (1, 3, 64, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], ref.transpose(2, 0, 1), atol=1e-5)


def test_preprocess_resizes_and_fills_a_given_buffer() -> None:
    engine = engine_for("imgly")
    buf = np.full((1, 3, 64, 64), np.nan, np.float32)
    out = engine.preprocess(random_image((200, 120)), out=buf)
    assert out is buf and not np.isnan(buf).any()


def test_postprocess_is_within_one_level_of_the_float_resize() -> None:
    engine = engine_for("imgly")
    raw = np.random.default_rng(1).random((1, 1, 64, 64), dtype=np.float32)
    size = (150, 97)
    matte = Image.fromarray(raw[0, 0], "F").resize(size, Image.Resampling.BILINEAR)
    ref = np.clip(np.asarray(matte) * 255 + 0.5, 0, 255).astype(np.uint8)
    got = engine.postprocess(raw, size)
    assert got.shape == (97, 150) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_postprocess_applies_minmax_and_sigmoid_transforms() -> None:
    raw = np.linspace(-4, 4, 64 * 64, dtype=np.float32).reshape(1, 1, 64, 64)
    minmax = engine_for("isnet").postprocess(raw, (64, 64))
    assert minmax.min() == 0 and minmax.max() == 255
    sigmoid = engine_for("birefnet").postprocess(raw, (64, 64))
    assert sigmoid[0, 0] == round(255 / (1 + np.exp(4)))
    assert sigmoid[-1, -1] == round(255 / (1 + np.exp(-4)))
    flat = engine_for("isnet").postprocess(np.ones((1, 1, 64, 64), np.float32), (64, 64))
    assert flat.max() == 0
