"""Which engine and precision a model runs on: fastest passing the quality gate, with
every way down to ONNX Runtime float32 (no OpenVINO, no native bf16/f16, a model it
cannot compile, nothing passing the gate)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bgsvc.config import Settings
from bgsvc.errors import ModelError
from bgsvc.inference import factory, openvino_engine, precision
from bgsvc.inference.base import BaseEngine
from bgsvc.inference.engine import Engine, RuntimeOptions
from bgsvc.inference.openvino_engine import OpenVinoEngine
from bgsvc.inference.precision import Trial
from bgsvc.inference.registry import ModelSpec, known_models
from tests.conftest import TINY_SIZE, subject_image


def tiny_spec(path: Path) -> ModelSpec:
    settings = Settings(
        custom_models={"tiny": {"path": path, "profile": "imgly", "input_size": TINY_SIZE}}
    )
    return known_models(settings)["tiny"]


def runtime(tmp_path: Path, **overrides: Any) -> RuntimeOptions:
    values: dict[str, Any] = {
        "provider": "cpu",
        "engine": "auto",
        "prepared_dir": tmp_path / ".prepared",
        "intra_op_threads": 1,
    }
    values.update(overrides)
    return RuntimeOptions(**values)


def fake_trials(monkeypatch: pytest.MonkeyPatch, *trials: Trial) -> list[int]:
    """Replace the measurement with fixed trials; returns a list counting the calls."""
    calls: list[int] = []

    def measure(*_: object) -> list[Trial]:
        calls.append(1)
        return list(trials)

    monkeypatch.setattr(factory, "_measure", measure)
    monkeypatch.setattr(openvino_engine, "native_precisions", lambda: ["bf16", "f16"])
    return calls


REF = Trial("onnxruntime", "f32", 0.010)


def load(tiny_model_path: Path, tmp_path: Path, **overrides: Any) -> BaseEngine:
    spec = tiny_spec(tiny_model_path)
    return factory.load_engine(spec, tiny_model_path, runtime(tmp_path, **overrides))


def assert_finds_the_subject(engine: BaseEngine) -> None:
    matte = engine.predict(subject_image((120, 80)))
    assert matte.shape == (80, 120) and matte.dtype == np.uint8
    assert matte[40, 60] > 200 and matte[2, 2] < 30


def test_auto_runs_openvino_at_the_fastest_precision_that_passes_the_gate(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_trials(
        monkeypatch,
        REF,
        Trial("openvino", "bf16", 0.002, iou_min=0.998, mae_max=0.2),
        Trial("openvino", "f16", 0.003, iou_min=0.999, mae_max=0.1),
    )
    engine = load(tiny_model_path, tmp_path)
    assert isinstance(engine, OpenVinoEngine)
    assert (engine.choice.engine, engine.choice.precision, engine.choice.device) == (
        "openvino",
        "bf16",
        "cpu",
    )
    assert "fastest that passes the quality gate" in engine.choice.reason
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    # Results of different precisions must never share a cache entry.
    assert ":openvino-bf16:" in engine.version
    assert_finds_the_subject(engine)


def test_a_faster_precision_that_fails_the_gate_gives_way_to_the_next(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_trials(
        monkeypatch,
        REF,
        Trial("openvino", "bf16", 0.002, iou_min=0.970, mae_max=1.2),
        Trial("openvino", "f16", 0.003, iou_min=0.999, mae_max=0.1),
    )
    engine = load(tiny_model_path, tmp_path)
    assert engine.choice.precision == "f16"
    assert "openvino-bf16 2.0 ms, IoU >= 0.9700, MAE <= 1.20 (failed the gate)" in (
        engine.choice.reason
    )


def test_nothing_passing_the_gate_falls_back_to_onnxruntime_float32(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_trials(
        monkeypatch,
        REF,
        Trial("openvino", "bf16", 0.002, iou_min=0.99, mae_max=0.5),
        Trial("openvino", "f16", 0.003, iou_min=0.999, mae_max=1.5),
    )
    engine = load(tiny_model_path, tmp_path)
    assert isinstance(engine, Engine)
    assert (engine.choice.engine, engine.choice.precision) == ("onnxruntime", "f32")
    assert "fastest that passes" in engine.choice.reason
    assert_finds_the_subject(engine)


def test_reduced_precision_slower_than_onnxruntime_loses_to_it(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CPU that reports f16 but emulates it: measured, not assumed.
    fake_trials(monkeypatch, REF, Trial("openvino", "f16", 0.030, iou_min=1.0, mae_max=0.0))
    assert load(tiny_model_path, tmp_path).choice.engine == "onnxruntime"


def test_engine_openvino_gates_its_float32_too(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_trials(
        monkeypatch,
        REF,
        Trial("openvino", "bf16", 0.002, iou_min=0.9, mae_max=3.0),
        Trial("openvino", "f32", 0.012, iou_min=1.0, mae_max=0.0),
    )
    engine = load(tiny_model_path, tmp_path, engine="openvino")
    # Slower than ONNX Runtime, but asked for, and it passed.
    assert (engine.choice.engine, engine.choice.precision) == ("openvino", "f32")
    assert_finds_the_subject(engine)
    assert calls == [1]


def test_engine_openvino_with_nothing_passing_falls_back_to_onnxruntime(
    tiny_model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_trials(
        monkeypatch,
        REF,
        Trial("openvino", "bf16", 0.002, iou_min=0.9, mae_max=3.0),
        Trial("openvino", "f32", 0.012, iou_min=0.97, mae_max=1.6),
    )
    with caplog.at_level(logging.WARNING, logger="bgsvc.inference.factory"):
        engine = load(tiny_model_path, tmp_path, engine="openvino")
    assert (engine.choice.engine, engine.choice.precision) == ("onnxruntime", "f32")
    assert "no OpenVINO precision passed the quality gate" in engine.choice.reason
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_a_cpu_without_native_bf16_or_f16_gets_onnxruntime(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_trials(monkeypatch, REF)
    monkeypatch.setattr(openvino_engine, "native_precisions", lambda: [])
    engine = load(tiny_model_path, tmp_path)
    assert engine.choice.engine == "onnxruntime"
    assert "neither bf16 nor f16 natively" in engine.choice.reason
    assert calls == []  # nothing to measure


def test_a_host_without_openvino_gets_onnxruntime(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openvino_engine, "available", lambda: False)
    engine = load(tiny_model_path, tmp_path)
    assert engine.choice.engine == "onnxruntime"
    assert "openvino package is not installed" in engine.choice.reason


def test_a_model_openvino_cannot_compile_falls_back_with_one_warning(
    tiny_model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_trials(monkeypatch, REF, Trial("openvino", "bf16", 0.002, iou_min=1.0, mae_max=0.0))

    def broken(path: Path, options: object, profile: object) -> None:
        raise ModelError(f"OpenVINO could not compile {path.name}: unsupported op")

    monkeypatch.setattr(openvino_engine, "compile_model", broken)
    with caplog.at_level(logging.WARNING, logger="bgsvc.inference.factory"):
        engine = load(tiny_model_path, tmp_path)
    assert engine.choice.engine == "onnxruntime"
    assert "unsupported op" in engine.choice.reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running ONNX Runtime float32" in warnings[0].getMessage()


def test_explicit_precision_is_honoured_without_measuring(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_trials(monkeypatch, REF)
    engine = load(tiny_model_path, tmp_path, precision="f16")
    assert (engine.choice.engine, engine.choice.precision) == ("openvino", "f16")
    assert engine.choice.reason == "BGSVC_PRECISION=f16 (ungated)"
    assert calls == []


def test_engine_onnxruntime_is_today_s_engine(tiny_model_path: Path, tmp_path: Path) -> None:
    engine = load(tiny_model_path, tmp_path, engine="onnxruntime")
    assert isinstance(engine, Engine)
    assert engine.choice.reason == "BGSVC_ENGINE=onnxruntime"


def test_trials_are_measured_once_per_machine_and_model_then_read_back(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[int] = []
    real = precision.run_trials

    def counting(*args: Any) -> list[Trial]:
        measured.append(1)
        return real(*args)

    monkeypatch.setattr(precision, "run_trials", counting)
    first = load(tiny_model_path, tmp_path)
    second = load(tiny_model_path, tmp_path)
    assert measured == [1]
    assert "[stored trials]" not in first.choice.reason
    assert "[stored trials]" in second.choice.reason
    stored = list((tmp_path / ".prepared" / "openvino").glob("trials-*.json"))
    assert len(stored) == 1
    # The real measurement of the tiny model: every native precision judged on every photo.
    assert "onnxruntime-f32" in second.choice.reason
    for at in openvino_engine.native_precisions():
        assert f"openvino-{at}" in second.choice.reason


def test_a_compiled_blob_that_disagrees_with_float32_is_rebuilt_then_given_up(
    tiny_model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_trials(monkeypatch, REF, Trial("openvino", "bf16", 0.002))
    first = load(tiny_model_path, tmp_path)
    (trials,) = (tmp_path / ".prepared" / "openvino").glob("trials-*.json")
    photo = precision.calibration_images()[0][0]
    # The float32 matte as the trials store it: the blob agrees and is kept.
    precision.store_reference(first.predict(photo), trials)
    assert load(tiny_model_path, tmp_path).choice.engine == "openvino"
    # A reference no compile can agree with (as a damaged blob would disagree with it).
    precision.store_reference(255 - first.predict(photo), trials)
    with caplog.at_level(logging.WARNING, logger="bgsvc.inference.factory"):
        engine = load(tiny_model_path, tmp_path)
    assert engine.choice.engine == "onnxruntime"
    assert "disagrees with float32" in engine.choice.reason
    messages = [r.getMessage() for r in caplog.records]
    assert any("recompiling" in m for m in messages)


def test_the_real_trials_store_the_reference_matte_the_blob_is_checked_against(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    load(tiny_model_path, tmp_path)
    (trials,) = (tmp_path / ".prepared" / "openvino").glob("trials-*.json")
    reference = precision.reference_path(trials)
    photo = precision.calibration_images()[0][0]
    with Image.open(reference) as stored:
        assert stored.size == photo.size


def test_trials_with_a_failure_are_not_stored(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_trials(monkeypatch, REF, Trial("openvino", "bf16", 0.0, error="std::bad_alloc"))
    assert load(tiny_model_path, tmp_path).choice.engine == "onnxruntime"
    assert load(tiny_model_path, tmp_path).choice.engine == "onnxruntime"
    assert calls == [1, 1]  # tried again at the next start


def test_a_damaged_trials_file_is_measured_again(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_trials(monkeypatch, REF, Trial("openvino", "bf16", 0.002))
    load(tiny_model_path, tmp_path)
    (stored,) = (tmp_path / ".prepared" / "openvino").glob("trials-*.json")
    stored.write_text("{not json")
    assert load(tiny_model_path, tmp_path).choice.precision == "bf16"
    assert calls == [1, 1]


def test_each_precision_compiles_into_a_cache_of_its_own(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    # OpenVINO's cache key leaves out the precision hint: one directory for all would
    # hand a bf16 compile the f16 blob.
    for at in ("bf16", "f16"):
        load(tiny_model_path, tmp_path, precision=at)
    # ... and per source file: OpenVINO's own blob check looks at path, size and mtime.
    (per_source,) = (tmp_path / ".prepared" / "openvino" / "cache").iterdir()
    caches = sorted(p.name for p in per_source.iterdir())
    assert caches == ["bf16-t1-s1", "f16-t1-s1"]
    assert all(any(p.iterdir()) for p in per_source.iterdir())


def test_concurrent_inferences_each_get_an_infer_request(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    engine = load(tiny_model_path, tmp_path, precision="f32", concurrency=2, intra_op_threads=2)
    images = [subject_image((60 + 7 * i, 50 + 3 * i)) for i in range(8)]
    expected = [engine.predict(img) for img in images]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = engine.predict(images[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(8))
    for i, matte in enumerate(expected):
        assert np.array_equal(matte, results[i])


def test_openvino_refuses_a_model_whose_input_size_disagrees_with_its_profile(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    spec = tiny_spec(tiny_model_path)
    wrong = replace(spec, profile=replace(spec.profile, input_size=TINY_SIZE * 2))
    options = openvino_engine.CompileOptions("f32", 1, 1, None)
    with pytest.raises(ModelError, match="set input_size"):
        OpenVinoEngine.load(wrong, tiny_model_path, options, version="v", reason="r")


@pytest.mark.parametrize(
    ("iou", "mae", "passed"),
    [(0.995, 1.0, True), (0.9949, 0.1, False), (1.0, 1.01, False)],
)
def test_gate_thresholds(iou: float, mae: float, passed: bool) -> None:
    assert Trial("openvino", "bf16", 0.1, iou_min=iou, mae_max=mae).passed is passed


def test_agreement_is_iou_at_half_and_mean_level_difference() -> None:
    a = np.zeros((10, 10), np.uint8)
    a[:5] = 255
    b = a.copy()
    b[4] = 100  # one row of the subject drops below half: IoU 40/50
    iou, mae = precision.agreement(a, b)
    assert iou == pytest.approx(0.8)
    assert mae == pytest.approx(155 * 10 / 100)
    assert precision.agreement(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)) == (
        1.0,
        0.0,
    )


def test_the_calibration_photos_ship_with_the_package() -> None:
    images, digest = precision.calibration_images()
    assert len(images) >= 4 and all(isinstance(i, Image.Image) for i in images)
    assert all(i.mode == "RGB" and min(i.size) >= 256 for i in images)
    assert len(digest) == 12


def test_ready_models_and_metrics_say_which_engine_and_precision_runs(
    make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_trials(monkeypatch, REF, Trial("openvino", "bf16", 0.002, iou_min=1.0, mae_max=0.0))
    client = make_client(engine="auto")
    ready = client.get("/ready").json()
    choice = ready["engines"]["tiny"]
    assert (choice["engine"], choice["precision"], choice["device"]) == ("openvino", "bf16", "cpu")
    assert "quality gate" in choice["reason"]
    (model,) = client.get("/models").json()["models"]
    assert model["runtime"] == choice
    metrics = client.get("/metrics").text
    assert (
        'bgsvc_engine_info{device="cpu",engine="openvino",model="tiny",precision="bf16"} 1.0'
        in metrics
    )


def two_output_model(path: Path) -> Path:
    """The tiny model plus a side output (as ISNet's deep-supervision maps are)."""
    import onnx
    from onnx import TensorProto, helper

    from tests.models import build_tiny_model

    model = onnx.load(str(build_tiny_model(path)))
    model.graph.node.append(helper.make_node("Neg", ["scaled"], ["side"]))
    model.graph.output.append(
        helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 1, TINY_SIZE, TINY_SIZE])
    )
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("profile", ["imgly", "isnet", "u2net", "birefnet"])
def test_every_profile_runs_on_openvino_pruned_to_its_output_as_onnxruntime_does(
    tmp_path: Path, profile: str
) -> None:
    path = two_output_model(tmp_path / "two.onnx")
    settings = Settings(
        custom_models={"two": {"path": path, "profile": profile, "input_size": TINY_SIZE}}
    )
    spec = known_models(settings)["two"]
    ov = factory.load_engine(spec, path, runtime(tmp_path, engine="openvino", precision="f32"))
    # ONNX Runtime with the same numpy/OpenCV pre/post (its wrapped graph resizes itself).
    ort = factory.load_engine(
        spec, path, runtime(tmp_path, engine="onnxruntime", graph_pipeline=False)
    )
    assert isinstance(ov, OpenVinoEngine) and len(ov.compiled.outputs) == 1
    for size in [(120, 80), (33, 47)]:
        img = subject_image(size)
        difference = np.abs(ov.predict(img).astype(int) - ort.predict(img).astype(int))
        assert int(difference.max()) <= 1


def test_a_broken_openvino_install_falls_back_instead_of_stopping_the_service(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[str]:
        raise RuntimeError("Exception from src/inference/src/core.cpp: plugin not found")

    monkeypatch.setattr(openvino_engine, "native_precisions", broken)
    engine = load(tiny_model_path, tmp_path)
    assert engine.choice.engine == "onnxruntime"
    assert "RuntimeError: Exception from src/inference" in engine.choice.reason
    assert_finds_the_subject(engine)


def test_trials_that_cannot_be_stored_are_used_all_the_same(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_trials(monkeypatch, REF, Trial("openvino", "bf16", 0.002))
    real_replace = Path.replace

    def full_disk(self: Path, target: Any) -> Path:
        if self.name.endswith(".part") and "trials-" in self.name:
            raise OSError(28, "No space left on device")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", full_disk)
    assert load(tiny_model_path, tmp_path).choice.precision == "bf16"
    assert load(tiny_model_path, tmp_path).choice.precision == "bf16"
    assert calls == [1, 1]  # measured again: nothing was stored
    assert not list((tmp_path / ".prepared" / "openvino").glob("*.part"))
