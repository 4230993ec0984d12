"""Per-pixel work in the graph (BGSVC_GRAPH_PIPELINE) against the numpy/Pillow path.

    PYTHONPATH=src:. python -m benchmarks.graph [--repeat 5]

Two measurements, each stage timed with perf_counter around the engine's own
preprocess / run / postprocess (what the service's Server-Timing reports):

* ``real``: the default model (imgly-medium, fp32 copy, the service's thread count), c=1,
  2 MP JPEG decoded once; medians over ``--repeat`` runs of each path, plus the mattes'
  agreement (IoU of alpha > 127, mean absolute difference in levels) on three photos.
* ``wrapper``: the same pipelines around a trivial model of the same input size
  (a channel mean), so the ~1 s forward pass and its noise are out of the numbers: what
  the in-graph resize/normalise/transform/resize-back costs against numpy/Pillow, at
  2 MP and 12 MP.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.images import upscaled_jpeg
from bgsvc.config import Settings
from bgsvc.inference.engine import Engine
from bgsvc.inference.loader import runtime_options
from bgsvc.inference.registry import known_models, resolve


def decoded(name: str, megapixels: float) -> Image.Image:
    body = upscaled_jpeg(name, megapixels).data
    with Image.open(io.BytesIO(body)) as img:
        return img.convert("RGB")


def stages(engine: Engine, img: Image.Image) -> tuple[dict[str, float], np.ndarray]:
    t0 = time.perf_counter()
    tensor = engine.preprocess(img)
    t1 = time.perf_counter()
    raw = engine.run(tensor)
    t2 = time.perf_counter()
    matte = engine.postprocess(raw, img.size)
    t3 = time.perf_counter()
    return {"preprocess": t1 - t0, "inference": t2 - t1, "mask": t3 - t2}, matte


def medians(
    pair: tuple[Engine, Engine], img: Image.Image, repeat: int
) -> tuple[dict[str, float], ...]:
    """Median ms per stage for each engine; runs alternate between the two so that load
    from other processes on the machine falls on both alike."""
    runs: list[list[dict[str, float]]] = [[], []]
    for _ in range(repeat):
        for i, engine in enumerate(pair):
            runs[i].append(stages(engine, img)[0])
    out = []
    for per in runs:
        row = {k: statistics.median(r[k] for r in per) * 1000 for k in per[0]}
        row |= {f"{k} min": min(r[k] for r in per) * 1000 for k in per[0]}
        row["outside min"] = min((r["preprocess"] + r["mask"]) * 1000 for r in per)
        out.append(row)
    return tuple(out)


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    fa, fb = a > 127, b > 127
    iou = float((fa & fb).sum() / max(1, (fa | fb).sum()))
    return iou, float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def engines(settings: Settings, name: str) -> tuple[Engine, Engine]:
    spec = resolve(name, settings)
    path = spec.file_in(settings.model_dir)
    graph = Engine.load(spec, path, runtime_options(settings))
    numpy_path = Engine.load(
        spec, path, runtime_options(settings.model_copy(update={"graph_pipeline": False}))
    )
    assert graph.graph_pipeline and not numpy_path.graph_pipeline
    for engine in (graph, numpy_path):
        engine.warmup()
    return graph, numpy_path


def report(label: str, graph: dict[str, float], numpy_path: dict[str, float]) -> None:
    for name, row in (("numpy/Pillow", numpy_path), ("graph", graph)):
        cells = " | ".join(
            f"{row[k]:.1f} ({row[k + ' min']:.1f})" for k in ("preprocess", "inference", "mask")
        )
        outside = row["preprocess"] + row["mask"]
        print(f"| {label} | {name} | {cells} | {outside:.1f} ({row['outside min']:.1f}) |")


def real(repeat: int) -> None:
    settings = Settings()
    graph, numpy_path = engines(settings, settings.default_model)
    img = decoded("chelsea", 2.0)
    report(
        f"{settings.default_model} {img.width}x{img.height}",
        *medians((graph, numpy_path), img, repeat),
    )
    for name in ("chelsea", "coffee", "astronaut"):
        photo = decoded(name, 2.0)
        iou, mae = agreement(graph.predict(photo), numpy_path.predict(photo))
        print(f"agreement {name} {photo.width}x{photo.height}: IoU {iou:.4f} MAE {mae:.3f}")


def wrapper(repeat: int) -> None:
    from tests.models import build_profile_model

    with tempfile.TemporaryDirectory() as folder:
        base = Settings()
        profile = resolve(base.default_model, base).profile
        path = build_profile_model(Path(folder) / "mean.onnx", profile.input_size, "clip")
        custom = {"path": path, "profile": profile.name, "input_size": profile.input_size}
        settings = Settings(model_dir=Path(folder), custom_models={"mean": custom})
        assert "mean" in known_models(settings)
        graph, numpy_path = engines(settings, "mean")
        for mp in (2.0, 12.0):
            img = decoded("coffee", mp)
            report(
                f"trivial model {img.width}x{img.height}",
                *medians((graph, numpy_path), img, repeat),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("what", nargs="*", default=["wrapper", "real"])
    args = parser.parse_args()
    print("| input | path | preprocess ms | inference ms | mask ms | pre+mask ms |")
    print("| (median (min) of --repeat) | | | | | |")
    print("| --- | --- | --- | --- | --- | --- |")
    if "wrapper" in args.what:
        wrapper(args.repeat)
    if "real" in args.what:
        real(args.repeat)


if __name__ == "__main__":
    main()
