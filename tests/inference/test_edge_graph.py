"""The edge step's ONNX graphs (inference.edge_graph) against the CPU path (imaging.edges),
on ORT's CPU provider.

Bounds: within one level on at least 99.9 % of pixels, two levels at most anywhere. Both
sides compute the same float32 formulas and round once to 8 bits; what differs is the
order of the sums (OpenCV's running box sums against AveragePool), the sample positions
(float64 in the kernels, float32 in Resize) and OpenCV's 11-bit fixed-point bilinear for
the matte outside the fit's box, so a value near a half may round the other way: one
level (measured: never more, on any case here). The second level is headroom for another
CPU's or ORT release's summation order. The last tests check that these bounds are tight
enough: a graph with the wrong radius, eps, border mode or sample positions fails them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import pytest
from benchmarks.matting import make_sample

from bgsvc.imaging import edges
from bgsvc.inference import edge_graph
from bgsvc.inference.edge_graph import EdgeGraphs
from tests.imaging.test_edges import hard_step_beside_strands

ort = pytest.importorskip("onnxruntime")

Case = tuple[np.ndarray, np.ndarray]  # matte, photo


def _options() -> Any:
    options = ort.SessionOptions()
    # One thread: the graphs are checked here, not timed; the machine is shared.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


@pytest.fixture(scope="module")
def graphs() -> EdgeGraphs:
    return EdgeGraphs(["CPUExecutionProvider"], session_options=_options())


@cache
def _drawn(kind: str, size: tuple[int, int], model_edge: int) -> tuple[np.ndarray, np.ndarray]:
    s = make_sample(kind, size, model_edge=model_edge)
    return s.matte, s.image


def _faint(matte: np.ndarray) -> np.ndarray:
    """A model's matte: faint 0-3 over the background and 252-255 over the subject."""
    noise = np.random.default_rng(3).integers(0, 4, matte.shape, dtype=np.uint8)
    return np.where(matte == 0, noise, np.where(matte == 255, 255 - noise, matte))


def _random() -> Case:
    """Soft everywhere, up to the grid's border: where the border mode shows."""
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (40, 70), np.uint8), rng.integers(0, 256, (120, 200, 3), np.uint8)


UPSCALE_CASES: dict[str, Callable[[], Case]] = {
    # The quarter-scale set of tests/imaging/test_edges.py: the grid 3.1 x 2.3 times smaller.
    "green 800x600, matte 256": lambda: _drawn("green", (800, 600), 256),
    # Odd sizes, and a photo smaller than the model's matte: the grid is 603 x 603.
    "busy 801x603, matte 1024": lambda: _drawn("busy", (801, 603), 1024),
    "redblue portrait 603x901, matte 256": lambda: _drawn("redblue", (603, 901), 256),
    # Between one and two grids: shrink's fractional area average makes the guide.
    "studio 1283x1021, matte 1024": lambda: _drawn("studio", (1283, 1021), 1024),
    "faint model matte": lambda: (
        _faint(_drawn("green", (800, 600), 256)[0]),
        _drawn("green", (800, 600), 256)[1],
    ),
    "hard edge, nothing soft": lambda: (
        np.where(_drawn("green", (800, 600), 256)[0] > 127, 255, 0).astype(np.uint8),
        _drawn("green", (800, 600), 256)[1],
    ),
    "empty matte": lambda: (np.zeros((256, 256), np.uint8), _drawn("green", (800, 600), 256)[1]),
    "hard step beside soft strands": hard_step_beside_strands,
    "random": _random,
    "tiny photo 7x5": lambda: (
        _drawn("busy", (801, 603), 1024)[0],
        _drawn("busy", (801, 603), 1024)[1][:5, :7].copy(),
    ),
}


def _agreement(got: np.ndarray, expected: np.ndarray) -> tuple[int, float]:
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    return int(diff.max()), float((diff <= 1).mean())


def _agrees(got: np.ndarray, expected: np.ndarray) -> bool:
    worst, within_one = _agreement(got, expected)
    return worst <= 2 and within_one >= 0.999


@pytest.mark.parametrize("name", list(UPSCALE_CASES))
def test_the_graphs_guided_enlargement_matches_the_cpu_edge_step_within_a_level(
    graphs: EdgeGraphs, name: str
) -> None:
    matte, photo = UPSCALE_CASES[name]()
    expected = edges.upscale_matte(matte, photo, refine=True)
    got = graphs.upscale(matte, photo)
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert _agrees(got, expected), _agreement(got, expected)


def _estimates(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """photo, alpha, f_hat, b_hat: the CPU's own, or random small maps (sharp, so that a
    sample half a pixel off shows)."""
    matte, photo = UPSCALE_CASES[name]()
    if name == "random":
        rng = np.random.default_rng(7)
        alpha = rng.integers(0, 256, photo.shape[:2], np.uint8)
        f_hat, b_hat = (rng.random((30, 50, 3), dtype=np.float32) for _ in range(2))
        return photo, alpha, f_hat, b_hat
    alpha = edges.upscale_matte(matte, photo)
    f_hat, b_hat = edges.foreground_ml(photo, alpha, 256)
    return photo, alpha, f_hat, b_hat


CORRECT_CASES = [
    "green 800x600, matte 256",
    "busy 801x603, matte 1024",
    "redblue portrait 603x901, matte 256",
    "random",
]


@pytest.mark.parametrize("name", CORRECT_CASES)
def test_the_graphs_colour_correction_matches_the_cpu_kernel_within_a_level(
    graphs: EdgeGraphs, name: str
) -> None:
    photo, alpha, f_hat, b_hat = _estimates(name)
    soft = (alpha >= edges.SOFT[0]) & (alpha <= edges.SOFT[1])
    assert soft.mean() > 0.01
    expected = edges.correct(photo.copy(), photo, alpha, f_hat, b_hat)
    # Into the RGB of an RGBA array, as the plain cutout asks, over a sentinel colour.
    rgba = np.full((*alpha.shape, 4), 7, np.uint8)
    got = graphs.correct(rgba[..., :3], photo, alpha, f_hat, b_hat)
    assert got is not None and np.shares_memory(got, rgba)
    assert _agrees(rgba[..., :3][soft], expected[soft]), _agreement(
        rgba[..., :3][soft], expected[soft]
    )
    assert (rgba[~soft] == 7).all(), "pixels outside the soft range must be left as they are"


def test_decontaminate_keeps_the_cpu_contract(graphs: EdgeGraphs) -> None:
    matte, photo = UPSCALE_CASES["busy 801x603, matte 1024"]()
    alpha = edges.upscale_matte(matte, photo)
    expected = edges.decontaminate(photo, alpha)
    got = graphs.decontaminate(photo, alpha)
    assert got.shape == photo.shape and got.dtype == np.uint8
    assert _agrees(got, expected), _agreement(got, expected)
    opaque = alpha == 255
    assert np.array_equal(got[opaque], photo[opaque])
    flat = np.full_like(alpha, 255)
    assert graphs.decontaminate(photo, flat) is photo
    out = np.zeros_like(photo)
    assert graphs.decontaminate(photo, flat, out=out) is out


def test_concurrent_calls_give_the_same_results(graphs: EdgeGraphs) -> None:
    matte, photo = UPSCALE_CASES["random"]()
    alone = graphs.upscale(matte, photo)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: graphs.upscale(matte, photo), range(8)))
    assert all(np.array_equal(r, alone) for r in results)


class FailingSession:
    """An ORT session whose every run fails, as one out of device memory does."""

    def run(self, outputs: Any, feeds: Any) -> Any:
        raise RuntimeError("Failed to allocate memory for requested buffer of size 1600000000")


def test_a_call_the_graphs_fail_runs_on_the_cpu_kernels_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[bool] = []
    failing = EdgeGraphs(
        ["CPUExecutionProvider"],
        session_options=_options(),
        on_fallback=lambda: counted.append(True),
    )
    failing._upscale = failing._correct = FailingSession()
    matte, photo = UPSCALE_CASES["busy 801x603, matte 1024"]()
    alpha = failing.upscale(matte, photo)
    assert np.array_equal(alpha, edges.upscale_matte(matte, photo))
    expected = edges.decontaminate(photo, alpha)
    assert np.array_equal(failing.decontaminate(photo, alpha), expected)
    # Into a caller's buffer (the cutout's RGB): the same pixels, in that buffer.
    rgba = np.zeros((*photo.shape[:2], 4), np.uint8)
    rgb = rgba[..., :3]
    rgb[...] = photo
    assert failing.decontaminate(photo, alpha, out=rgb) is rgb
    assert np.array_equal(rgb, expected)
    assert failing.fallbacks == 3 and counted == [True] * 3
    warnings = [r for r in caplog.records if "ONNX graph failed" in r.getMessage()]
    assert len(warnings) == 1 and "allocate memory" in warnings[0].getMessage()
    assert warnings[0].exc_info is not None


# The ops the graphs may use: ORT's CUDA provider registers each of these at opset 18
# (docs/OperatorKernels.md) for the types used here. Conv and MatMul are left out on
# purpose: cuDNN and cuBLAS may run them in TF32.
CUDA_OPS = {
    "Add",
    "And",
    "AveragePool",
    "Cast",
    "Clip",
    "Concat",
    "Floor",
    "Gather",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Pad",
    "Range",
    "Reciprocal",
    "ReduceMax",
    "ReduceMin",
    "Reshape",
    "Resize",
    "Shape",
    "Slice",
    "Split",
    "Squeeze",
    "Sub",
    "Transpose",
    "Unsqueeze",
    "Where",
}


def test_the_graphs_use_opset_18_and_only_ops_the_cuda_provider_implements() -> None:
    for model in (edge_graph.upscale_model(), edge_graph.correct_model()):
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
        assert {node.op_type for node in model.graph.node} <= CUDA_OPS


def _session(model: Any) -> Any:
    return ort.InferenceSession(
        model.SerializeToString(), _options(), providers=["CPUExecutionProvider"]
    )


def _upscaled_by(model: Any) -> np.ndarray:
    matte, photo = _random()
    grid = edges._grid((matte.shape[1], matte.shape[0]), (photo.shape[1], photo.shape[0]), 1024)
    feeds = {
        "photo": photo,
        "matte": edges._resize(matte, grid),
        "guide": edges._resize(photo, grid),
    }
    out: np.ndarray = _session(model).run(None, feeds)[0]
    return out


def _reflect_101(g: Any, x: str, radius: int) -> str:
    k = 2 * radius + 1
    pads = g.const([0, 0, radius, radius, 0, 0, radius, radius], np.int64)
    return g.op("AveragePool", g.op("Pad", x, pads, mode="reflect"), kernel_shape=[k, k])


def _edge(g: Any, x: str, radius: int) -> str:
    k = 2 * radius + 1
    pads = g.const([0, 0, radius, radius, 0, 0, radius, radius], np.int64)
    return g.op("AveragePool", g.op("Pad", x, pads, mode="edge"), kernel_shape=[k, k])


def _sampled(mode: str) -> Callable[[Any, str, str], str]:
    def enlarge(g: Any, x: str, like: str) -> str:
        channels = g.op("Shape", x, start=0, end=2)
        sizes = g.op("Concat", channels, g.op("Shape", like, start=0, end=2), axis=0)
        return g.op("Resize", x, "", "", sizes, mode="linear", coordinate_transformation_mode=mode)

    return enlarge


@pytest.fixture
def wrong(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, Any], None]]:
    yield lambda name, fn: monkeypatch.setattr(edge_graph, name, fn)


@pytest.mark.parametrize(
    "mistake",
    [
        "radius 2",
        "radius 4",
        "eps 1e-3",
        "eps 1e-5",
        "reflect-101 border",
        "edge border",
        "asymmetric samples",
        "align-corners samples",
    ],
)
def test_the_bounds_fail_a_guided_enlargement_with_a_wrong_parameter(
    wrong: Callable[[str, Any], None], mistake: str
) -> None:
    matte, photo = _random()
    expected = edges.upscale_matte(matte, photo)
    assert _agrees(_upscaled_by(edge_graph.upscale_model()), expected)
    kwargs: dict[str, Any] = {}
    if mistake.startswith("radius"):
        kwargs["radius"] = int(mistake.split()[1])
    elif mistake.startswith("eps"):
        kwargs["eps"] = float(mistake.split()[1])
    elif mistake.endswith("border"):
        wrong("_box_mean", _reflect_101 if mistake.startswith("reflect") else _edge)
    else:
        wrong("_enlarge", _sampled("asymmetric" if mistake.startswith("asym") else "align_corners"))
    assert not _agrees(_upscaled_by(edge_graph.upscale_model(**kwargs)), expected)


@pytest.mark.parametrize("mode", ["asymmetric", "align_corners"])
def test_the_bounds_fail_a_colour_correction_sampled_off_the_pixel_centres(
    wrong: Callable[[str, Any], None], mode: str
) -> None:
    photo, alpha, f_hat, b_hat = _estimates("random")
    expected = edges.correct(photo.copy(), photo, alpha, f_hat, b_hat)
    feeds = {"photo": photo, "alpha": alpha, "f_hat": f_hat, "b_hat": b_hat}
    assert _agrees(_session(edge_graph.correct_model()).run(None, feeds)[0], expected)
    wrong("_enlarge", _sampled(mode))
    assert not _agrees(_session(edge_graph.correct_model()).run(None, feeds)[0], expected)
