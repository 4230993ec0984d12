"""Model preparation: the float32 copy, the cached optimised graph, and their keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bgsvc.errors import ModelError
from bgsvc.inference import prepare
from bgsvc.inference.engine import Engine, RuntimeOptions
from bgsvc.inference.providers import CPU
from bgsvc.inference.registry import known_models
from tests.conftest import TINY_SIZE, subject_image


def build_fp16_model(path: Path, size: int = TINY_SIZE, unsorted: bool = True) -> Path:
    """Shaped like the shipped ISNet export: fp32 input cast to fp16, fp16 weights and
    Constants inside, cast back to fp32 at the end; boundary Casts listed last (unsorted),
    as fp16 converters leave them."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])
    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 8 / 3, np.float16), "w")
    bias = helper.make_node(
        "Constant",
        [],
        ["b"],
        value=numpy_helper.from_array(np.array([0.25], np.float16), "b_value"),
    )
    body = [
        bias,
        helper.make_node("Conv", ["x16", "w"], ["conv"]),
        helper.make_node("Add", ["conv", "b"], ["biased"]),
        helper.make_node("Sigmoid", ["biased"], ["y16"]),
    ]
    casts = [
        helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["y16"], ["output"], to=TensorProto.FLOAT),
    ]
    nodes = body + casts if unsorted else [casts[0], *body, casts[1]]
    graph = helper.make_graph(nodes, "fp16", [inp], [out], initializer=[weight])
    graph.value_info.append(
        helper.make_tensor_value_info("conv", TensorProto.FLOAT16, [1, 1, size, size])
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=[CPU])
    result: np.ndarray = sess.run(["output"], {"input": x})[0]
    return result


@pytest.fixture
def fp16_model(tmp_path: Path) -> Path:
    return build_fp16_model(tmp_path / "half.onnx")


def test_fp32_copy_has_no_fp16_left_and_computes_the_same(fp16_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "full.onnx"
    prepare.convert_fp16_to_fp32(fp16_model, dst)
    model = onnx.load(str(dst))
    assert all(t.data_type == TensorProto.FLOAT for t in model.graph.initializer)
    assert not prepare.has_fp16_weights(dst)
    onnx.checker.check_model(model)  # sorted and well-typed, though the source was not
    x = np.random.default_rng(0).random((1, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32) - 0.5
    np.testing.assert_allclose(run(dst, x), run(fp16_model, x), atol=2e-3)


def test_fp32_copy_is_made_once_and_reused(fp16_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    first = prepare.fp32_copy(fp16_model, "k1", out)
    stamp = first.stat().st_mtime_ns
    second = prepare.fp32_copy(fp16_model, "k1", out)
    assert first == second and second.stat().st_mtime_ns == stamp
    assert first.parent == out and "k1" in first.name
    assert not list(out.glob("*.part"))


def test_fp32_model_needs_no_copy(tiny_model_path: Path, tmp_path: Path) -> None:
    assert prepare.fp32_copy(tiny_model_path, "k", tmp_path) == tiny_model_path
    assert not list(tmp_path.iterdir())


def test_topological_order_puts_producers_first() -> None:
    a = helper.make_node("Relu", ["x"], ["a"])
    b = helper.make_node("Relu", ["a"], ["b"])
    c = helper.make_node("Relu", ["b"], ["c"])
    assert [n.output[0] for n in prepare.topological_order([c, a, b])] == ["a", "b", "c"]


def test_a_cyclic_graph_is_refused() -> None:
    a = helper.make_node("Relu", ["b"], ["a"])
    b = helper.make_node("Relu", ["a"], ["b"])
    with pytest.raises(ModelError, match="cycle"):
        prepare.topological_order([a, b])


def test_source_key_uses_the_known_hash_or_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"abc")
    assert prepare.source_key(f, "f" * 64) == "f" * 16
    before = prepare.source_key(f, None)
    f.write_bytes(b"abcd")
    assert prepare.source_key(f, None) != before


def test_hardware_key_names_the_runtime_version() -> None:
    assert prepare.hardware_key().startswith(f"ort{ort.__version__}-")


def _spec(path: Path):  # type: ignore[no-untyped-def]
    from bgsvc.config import Settings

    settings = Settings(
        custom_models={"m": {"path": path, "profile": "imgly", "input_size": TINY_SIZE}}
    )
    return known_models(settings)["m"]


def test_engine_runs_the_fp32_copy_on_cpu_and_caches_the_optimised_graph(
    fp16_model: Path, tmp_path: Path
) -> None:
    prepared = tmp_path / "prepared"
    runtime = RuntimeOptions("cpu", prepared_dir=prepared)
    first = Engine.load(_spec(fp16_model), fp16_model, runtime)
    names = sorted(p.name for p in prepared.iterdir())
    assert any(n.endswith("-fp32.onnx") for n in names)
    assert any(n.endswith("-opt.onnx") for n in names)
    second = Engine.load(_spec(fp16_model), fp16_model, runtime)
    img = subject_image((60, 40))
    np.testing.assert_array_equal(first.predict(img), second.predict(img))
    assert fp16_model.read_bytes() == build_fp16_model(tmp_path / "again.onnx").read_bytes()


def test_damaged_optimised_cache_is_rebuilt(fp16_model: Path, tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    runtime = RuntimeOptions("cpu", prepared_dir=prepared)
    Engine.load(_spec(fp16_model), fp16_model, runtime)
    (opt,) = prepared.glob("*-opt.onnx")
    opt.write_bytes(b"garbage")
    engine = Engine.load(_spec(fp16_model), fp16_model, runtime)
    assert engine.predict(subject_image((60, 40))).shape == (40, 60)
    assert opt.read_bytes() != b"garbage"


def test_without_a_prepared_dir_nothing_is_derived(fp16_model: Path, tmp_path: Path) -> None:
    Engine.load(_spec(fp16_model), fp16_model, RuntimeOptions("cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.onnx"]


def test_cpu_fp32_off_runs_the_original(fp16_model: Path, tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    runtime = RuntimeOptions(
        "cpu", prepared_dir=prepared, cpu_fp32=False, cache_optimized=False, graph_pipeline=False
    )
    Engine.load(_spec(fp16_model), fp16_model, runtime)
    assert not prepared.exists()


def _calibration_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, size in enumerate([(80, 60), (64, 64), (50, 90)]):
        subject_image(size).save(folder / f"p{i}.png")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_int8_copy_is_quantised_calibrated_and_close_to_fp32(
    fp16_model: Path, tmp_path: Path
) -> None:
    prepared = tmp_path / "prepared"
    fp32 = Engine.load(_spec(fp16_model), fp16_model, RuntimeOptions("cpu", prepared_dir=prepared))
    runtime = RuntimeOptions(
        "cpu",
        prepared_dir=prepared,
        cpu_int8=True,
        int8_calibration_dir=_calibration_dir(tmp_path),
        cache_optimized=False,
    )
    int8 = Engine.load(_spec(fp16_model), fp16_model, runtime)
    (quantised,) = (p for p in prepared.glob("*-int8-*.onnx") if "-graph" not in p.name)
    ops = {n.op_type for n in onnx.load(str(quantised)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The int8 copy is what gets wrapped: calibrated unwrapped, run wrapped.
    assert int8.graph_pipeline and quantised.stem in int8.version
    img = subject_image((60, 40))
    diff = np.abs(fp32.predict(img).astype(int) - int8.predict(img).astype(int))
    assert diff.max() <= 8  # 8-bit activations: a few levels at most


def test_int8_without_calibration_photos_says_what_to_do(fp16_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    runtime = RuntimeOptions(
        "cpu", prepared_dir=tmp_path / "prepared", cpu_int8=True, int8_calibration_dir=empty
    )
    with pytest.raises(ModelError, match="holds no images"):
        Engine.load(_spec(fp16_model), fp16_model, runtime)


def test_unwritable_prepared_dir_still_loads(tiny_model_path: Path, tmp_path: Path) -> None:
    import shutil

    from bgsvc.config import Settings
    from bgsvc.inference.loader import runtime_options
    from bgsvc.inference.registry import known_models

    model_dir = tmp_path / "models"
    model_dir.mkdir()
    model = shutil.copy(tiny_model_path, model_dir / "tiny.onnx")
    # Tests run as root, which ignores permission bits: a file where the folder should be
    # is an unwritable prepared directory for root too.
    (model_dir / prepare.PREPARED_DIRNAME).write_text("not a folder")
    settings = Settings(
        model_dir=model_dir,
        custom_models={"tiny": {"path": model, "profile": "imgly", "input_size": 32}},
        default_model="tiny",
    )
    spec = known_models(settings)["tiny"]
    engine = Engine.load(spec, spec.file_in(model_dir), runtime_options(settings))
    assert engine.predict(subject_image((40, 30))).shape == (30, 40)
