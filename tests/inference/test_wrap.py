"""The wrapped graph (inference.wrap): the same mattes as the numpy/OpenCV pipeline, from
uint8 pixels of any size, cached and rebuilt like the other prepared files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import skimage.data
from PIL import Image

from bgsvc.config import Settings
from bgsvc.inference import wrap
from bgsvc.inference.base import WARMUP_SIZE
from bgsvc.inference.engine import Engine, RuntimeOptions
from bgsvc.inference.registry import ModelSpec, known_models
from tests.models import build_profile_model

# (width, height): a single pixel, extreme strips both ways, odd 2 MP both ways, 4:3.
SIZES = [(1, 1), (300, 7), (7, 300), (1801, 1203), (1203, 1801), (640, 480)]

# name: (profile, model input size, transform of the generated model, outputs, the
# output read, fp16 weights/IO)
CASES: dict[str, tuple[str, int, str, int, int, bool]] = {
    "imgly-clip": ("imgly", 1024, "clip", 1, 0, False),
    "isnet-minmax": ("isnet", 1024, "minmax", 1, 0, False),
    "u2net-minmax-7-outputs": ("u2net", 320, "minmax", 7, 0, False),
    "u2net-output-index-2": ("u2net", 320, "minmax", 4, 2, False),
    "birefnet-sigmoid": ("birefnet", 1024, "sigmoid", 1, 0, False),
    "imgly-fp16": ("imgly", 1024, "clip", 1, 0, True),
}


def make_spec(path: Path, profile: str, size: int, output_index: int) -> ModelSpec:
    custom = {"path": path, "profile": profile, "input_size": size, "output_index": output_index}
    return known_models(Settings(custom_models={"m": custom}))["m"]


def photo(size: tuple[int, int]) -> Image.Image:
    """A real photograph at ``size`` (the tolerances below are for photos, not noise)."""
    return Image.fromarray(skimage.data.coffee()).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Engine, Engine]]:
    """Per case: (wrapped engine, numpy/OpenCV engine) on the same generated model."""
    out: dict[str, tuple[Engine, Engine]] = {}
    for name, (profile, size, transform, outputs, index, fp16) in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        path = build_profile_model(
            folder / f"{name}.onnx", size, transform, outputs=outputs, main_output=index, fp16=fp16
        )
        spec = make_spec(path, profile, size, index)
        # cpu_fp32 off: both run the model as generated (fp16 stays fp16).
        common: dict[str, Any] = {"prepared_dir": folder / "prepared", "cpu_fp32": False}
        graph = Engine.load(spec, path, RuntimeOptions("cpu", **common))
        numpy_path = Engine.load(spec, path, RuntimeOptions("cpu", graph_pipeline=False, **common))
        assert graph.graph_pipeline and not numpy_path.graph_pipeline
        out[name] = (graph, numpy_path)
    return out


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("case", list(CASES))
def test_wrapped_matte_matches_the_numpy_pipeline(
    engines: dict[str, tuple[Engine, Engine]], case: str, size: tuple[int, int]
) -> None:
    graph, numpy_path = engines[case]
    img = photo(size)
    got, want = graph.predict(img), numpy_path.predict(img)
    assert got.shape == want.shape == (size[1], size[0]) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    # The resizes agree to within one level (OpenCV's fixed-point bilinear against ORT's
    # float one, rounded; Pillow's antialiased shrink against ORT's). The generated models
    # amplify an input level by up to ~9 matte levels (birefnet's steep sigmoid), hence
    # the max; on average the mattes are within half a level. Measured: max 1-5 (9 for
    # birefnet at 2 MP), mean <= 0.29 level.
    assert diff.mean() <= 0.5
    assert diff.max() <= 10


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return build_profile_model(tmp_path / "m.onnx", 64, "minmax", outputs=3)


def load(model: Path, tmp_path: Path, **options: Any) -> Engine:
    runtime = RuntimeOptions("cpu", prepared_dir=tmp_path / "prepared", **options)
    return Engine.load(make_spec(model, "isnet", 64, 0), model, runtime)


def test_wrapped_graph_takes_uint8_pixels_and_returns_only_the_matte(
    model: Path, tmp_path: Path
) -> None:
    engine = load(model, tmp_path)
    (wrapped,) = (tmp_path / "prepared").glob("*-graph*[0-9a-f].onnx")
    graph = onnx.load(str(wrapped)).graph
    assert [i.name for i in graph.input] == [wrap.INPUT]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in graph.output] == [wrap.OUTPUT]
    assert max(o.version for o in onnx.load(str(wrapped)).opset_import) == wrap.OPSET
    # The side heads' nodes are gone, not just unread.
    assert not any(n.output[0].startswith("side") for n in graph.node)
    pixels = engine.preprocess(photo((50, 30)))
    assert pixels.shape == (30, 50, 3) and pixels.dtype == np.uint8
    assert engine.run(pixels).shape == (30, 50)


def test_wrapped_file_is_reused_and_keys_the_optimised_graph_and_result_cache(
    model: Path, tmp_path: Path
) -> None:
    first = load(model, tmp_path)
    (wrapped,) = (tmp_path / "prepared").glob("*-graph*[0-9a-f].onnx")
    stamp = wrapped.stat().st_mtime_ns
    second = load(model, tmp_path)
    assert wrapped.stat().st_mtime_ns == stamp
    assert first.version == second.version and wrapped.name in first.version
    (optimised,) = (tmp_path / "prepared").glob("*-opt.onnx")
    assert optimised.name.startswith(wrapped.stem)


def test_a_changed_wrapper_or_profile_never_pairs_with_a_stale_file(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = load(model, tmp_path)
    monkeypatch.setattr(wrap, "WRAP_VERSION", wrap.WRAP_VERSION + 1)
    after = load(model, tmp_path)
    assert after.version != before.version
    assert f"graph{wrap.WRAP_VERSION}-" in after.version
    other_size = Engine.load(
        make_spec(model, "isnet", 32, 0),
        model,
        RuntimeOptions("cpu", prepared_dir=tmp_path / "prepared"),
    )
    assert other_size.version not in (before.version, after.version)
    assert len(list((tmp_path / "prepared").glob("*-graph*[0-9a-f].onnx"))) == 3


def test_setting_off_restores_the_numpy_path(model: Path, tmp_path: Path) -> None:
    from bgsvc.inference.loader import runtime_options

    settings = Settings(model_dir=tmp_path, graph_pipeline=False)
    runtime = runtime_options(settings)
    assert runtime.graph_pipeline is False
    engine = Engine.load(make_spec(model, "isnet", 64, 0), model, runtime)
    assert not engine.graph_pipeline
    assert engine.preprocess(photo((50, 30))).shape == (1, 3, 64, 64)
    assert not list((tmp_path / ".prepared").glob("*-graph*"))
    assert Settings().graph_pipeline is True


def test_a_model_that_cannot_be_wrapped_runs_unwrapped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = build_profile_model(tmp_path / "m.onnx", 64, "minmax")
    model = onnx.load(str(path))
    # A model that already names a tensor like the wrapper's output.
    model.graph.node[-1].output[0] = model.graph.output[0].name = wrap.OUTPUT
    onnx.save(model, str(path))
    caplog.set_level("WARNING")
    engine = load(path, tmp_path)
    assert "could not wrap" in caplog.text
    assert not engine.graph_pipeline
    assert engine.predict(photo((50, 30))).shape == (30, 50)


def test_warmup_runs_a_photo_sized_non_square_image(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = load(model, tmp_path)
    seen: list[tuple[int, ...]] = []
    real_run = engine.run

    def recording(pixels: np.ndarray) -> np.ndarray:
        seen.append(pixels.shape)
        return real_run(pixels)

    monkeypatch.setattr(engine, "run", recording)
    engine.warmup()
    width, height = WARMUP_SIZE
    assert seen == [(height, width, 3)] and width != height and width > 64


class BoundSession:
    """A CUDA-flavoured session stand-in that records what io_binding was handed."""

    def __init__(self) -> None:
        self.bound: list[np.ndarray] = []

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def _arg(self, name: str, kind: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(name=name, type=kind, shape=["height", "width", 3])

    def get_inputs(self) -> list[Any]:
        return [self._arg(wrap.INPUT, "tensor(uint8)")]

    def get_outputs(self) -> list[Any]:
        return [self._arg(wrap.OUTPUT, "tensor(uint8)")]

    def io_binding(self) -> Any:
        session = self

        class Binding:
            def bind_cpu_input(self, name: str, value: np.ndarray) -> None:
                session.bound.append(value)

            def bind_output(self, name: str, device: str) -> None:
                pass

            def copy_outputs_to_cpu(self) -> list[np.ndarray]:
                h, w = session.bound[-1].shape[:2]
                return [np.full((h, w), 7, np.uint8)]

        return Binding()

    def run_with_iobinding(self, binding: Any) -> None:
        pass


def test_io_binding_feeds_the_uint8_pixels_unconverted(model: Path) -> None:
    session = BoundSession()
    spec = make_spec(model, "isnet", 64, 0)
    engine = Engine(spec, session, 0.0, io_binding=True)  # type: ignore[arg-type]
    img = photo((50, 30))
    matte = engine.predict(img)
    (bound,) = session.bound
    assert bound.dtype == np.uint8 and bound.shape == (30, 50, 3)
    np.testing.assert_array_equal(bound, np.asarray(img))
    assert matte.shape == (30, 50) and (matte == 7).all()
