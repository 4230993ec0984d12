"""The edge step's full-resolution work (imaging.edges) as two small ONNX graphs, for GPU
hosts: ONNX Runtime's CUDA provider runs them on the device, where the CPU path runs numba.

"upscale" is edges.guided_upscale, the fast colour guided filter. Inputs: ``photo`` (uint8
HxWx3), ``matte`` (uint8 hxw, already on the fit grid) and ``guide`` (uint8 hxwx3, the photo
on that grid). In the graph: the box of soft matte values (edges.SOFT) grown by 3r + 2,
found with ReduceMax over rows and columns; on its crop, the window means of r, g, b, p
and their products, the 3x3 solve by cofactors (edge_kernels.fit's float32 arithmetic)
and the box mean of the coefficients; back on the grid, their bilinear enlargement to HxW
and q = a.I + b, where every bilinear sample lies in the box, else the matte's plain
enlargement (edges._footprint and the "flat" map). Fitting the crop, not the grid, is what
the CPU does, and it matters: at the crop's border the CPU reflects, and on a noisy faint
matte the pixels there moved by up to 11 levels when the graph used real neighbours.

The grid (edges._grid: the matte's aspect, long edge <= FIT_EDGE) and both small inputs
are made on the CPU exactly as guided_upscale makes them. The guide is imaging.resize.
shrink: a whole-factor area average in OpenCV, then its uint8 fixed-point bilinear step,
or a fractional area average for photos under two grids. A graph can redo the first by
reshaping the photo into cells (benchmarks/edge_graph.py does), not the fractional one,
and its float bilinear step rounds differently: the enlarged matte then came out up to
42, 3 and 11 levels off at 2, 12 and 25 MP (0.12 % of pixels beyond one at 25 MP),
against 1 with the CPU's guide, which costs 14-27 ms of one core there. The matte's shrink
is a no-op for the model's own 1024 x 1024 matte under a larger photo.

"correct" is edge_kernels.correct. Inputs: ``photo`` (uint8 HxWx3), ``alpha`` (uint8 HxW),
``f_hat``, ``b_hat`` (float32 hxwx3 in [0, 1]); output (uint8 HxWx3) the photo where alpha
is outside SOFT, else F^ + a(I - aF^ - (1 - a)B^), F^ and B^ enlarged bilinearly.

Matching OpenCV: Resize "linear" with half_pixel coordinates clamps at the edges, as
INTER_LINEAR and edge_kernels._taps do. BORDER_REFLECT repeats the edge pixel ("cba|abc");
Pad's "reflect" does not and "edge" repeats one pixel, so the box means pad by Gather
([r-1..0] and [-1..-r]) before an AveragePool. Outputs round half up like the kernels.

CUDA: opset 18, as inference.wrap (the CUDA provider registers Resize up to 18 in the
releases the service runs). Only ops it implements for the types used (the test lists
them): Resize on 4-D NCHW (a 3-D tensor would go to its trilinear kernel), so images are
transposed to CHW while still uint8; comparisons on float or int64 (none for uint8). No
Conv or MatMul: cuDNN and cuBLAS may run them in TF32, and the fit needs float32
(E[Ip] - E[I]E[p] against eps = 1e-4); AveragePool and Resize have their own kernels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from numba import njit

from bgsvc.imaging import edges
from bgsvc.imaging.opencv import cv2

log = logging.getLogger(__name__)

OPSET = 18
_FLOAT = 1
_UINT8 = 2


class _Graph:
    """The nodes and constants of one graph, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.consts: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, values: Any, dtype: Any) -> str:
        from onnx import numpy_helper

        name = self._name("const")
        self.consts.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        return self.ops(op_type, inputs, 1, **attrs)[0]

    def ops(self, op_type: str, inputs: Sequence[str], count: int, **attrs: Any) -> list[str]:
        from onnx import helper

        outputs = [self._name(op_type.lower()) for _ in range(count)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, **attrs))
        return outputs

    def f32(self, value: float) -> str:
        return self.const(value, np.float32)

    def axes(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def model(self, inputs: list[Any], outputs: list[Any], name: str) -> Any:
        from onnx import checker, helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.consts)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bgsvc"
        )
        # opset 18's IR: the onnx package would write its newest, which an older ORT refuses.
        model.ir_version = 8
        checker.check_model(model, full_check=True)
        return model


def _nchw(g: _Graph, hwc: str) -> str:
    """An HxWxC tensor as float 1xCxHxW: transposed while still uint8, the cheaper copy."""
    chw = g.op("Transpose", hwc, perm=[2, 0, 1])
    return g.op("Unsqueeze", g.op("Cast", chw, to=_FLOAT), g.axes(0))


def _enlarge(g: _Graph, nchw: str, like: str) -> str:
    """``nchw`` (1xCxhxw) bilinearly to the size of ``like`` (HxW...), with half-pixel
    centres, clamped at the edges: OpenCV's INTER_LINEAR."""
    channels = g.op("Shape", nchw, start=0, end=2)
    sizes = g.op("Concat", channels, g.op("Shape", like, start=0, end=2), axis=0)
    half_pixel = {"coordinate_transformation_mode": "half_pixel"}
    return g.op("Resize", nchw, "", "", sizes, mode="linear", **half_pixel)


def _box_mean(g: _Graph, nchw: str, radius: int) -> str:
    """The mean over each (2r+1)^2 window of a 1xCxhxw tensor, OpenCV's BORDER_REFLECT."""
    padded = nchw
    for axis in (2, 3):
        before = g.op(
            "Gather", padded, g.const(list(range(radius - 1, -1, -1)), np.int64), axis=axis
        )
        after = g.op(
            "Gather", padded, g.const(list(range(-1, -radius - 1, -1)), np.int64), axis=axis
        )
        padded = g.op("Concat", before, padded, after, axis=axis)
    k = 2 * radius + 1
    return g.op("AveragePool", padded, kernel_shape=[k, k])


def _to_uint8(g: _Graph, x: str) -> str:
    """Rounded half up and clamped, as the kernels write: 0 if x <= 0, 255 if x >= 255."""
    rounded = g.op("Floor", g.op("Clip", g.op("Add", x, g.f32(0.5)), g.f32(0), g.f32(255)))
    return g.op("Cast", rounded, to=_UINT8)


def _soft_box(g: _Graph, p: str, margin: int) -> tuple[str, str, str, str]:
    """edges._soft_box in the graph: the bounding box of where p (1x1xhxw, 0-255) varies
    (edges._varies) grown by ``margin``, as Slice starts and ends (int64 [y0, x0], [y1,
    x1]) and as a bool 1x1xhxw mask; and the varying pixels' own mask (float 1x1xhxw, 0
    or 1). Where nothing varies the bounds span the grid (the fit has something to run on)
    and the masks are all false."""
    lo, hi = edges.SOFT
    soft = g.op("And", g.op("GreaterOrEqual", p, g.f32(lo)), g.op("LessOrEqual", p, g.f32(hi)))
    # edges._varies: or a step of more than the faint values to a 3x3 neighbour, the
    # neighbourhood's max - min, as max(p) + max(-p).
    around = {"kernel_shape": [3, 3], "pads": [1] * 4}
    spread = g.op(
        "Add", g.op("MaxPool", p, **around), g.op("MaxPool", g.op("Mul", p, g.f32(-1)), **around)
    )
    varies = g.op(
        "Max",
        g.op("Cast", soft, to=_FLOAT),
        g.op("Cast", g.op("GreaterOrEqual", spread, g.f32(lo)), to=_FLOAT),
    )
    found = g.op("Greater", g.op("ReduceMax", varies, keepdims=0), g.f32(0))
    starts, ends, inside = [], [], []
    for axis, other, shape in ((2, 3, [1, 1, -1, 1]), (3, 2, [1, 1, 1, -1])):
        hit = g.op("Greater", g.op("ReduceMax", varies, g.axes(other)), g.f32(0))
        length = g.op("Squeeze", g.op("Shape", p, start=axis, end=axis + 1), g.axes(0))
        index = g.op("Range", g.const(0, np.int64), length, g.const(1, np.int64))
        index = g.op("Reshape", index, g.const(shape, np.int64))
        first = g.op("ReduceMin", g.op("Where", hit, index, length), keepdims=0)
        last = g.op("ReduceMax", g.op("Where", hit, index, g.const(-1, np.int64)), keepdims=0)
        start = g.op("Max", g.op("Sub", first, g.const(margin, np.int64)), g.const(0, np.int64))
        end = g.op("Min", g.op("Add", last, g.const(margin + 1, np.int64)), length)
        start = g.op("Where", found, start, g.const(0, np.int64))
        end = g.op("Where", found, end, length)
        starts.append(g.op("Unsqueeze", start, g.axes(0)))
        ends.append(g.op("Unsqueeze", end, g.axes(0)))
        inside.append(g.op("And", g.op("GreaterOrEqual", index, start), g.op("Less", index, end)))
    box = g.op("And", found, g.op("And", *inside))
    return g.op("Concat", *starts, axis=0), g.op("Concat", *ends, axis=0), box, varies


def _solve(g: _Graph, means: str, eps: float, near: str) -> list[str]:
    """edge_kernels.fit's solve on the window means (1x13xhxw: r, g, b, p in 0-255, then rp, gp,
    bp, rr, gg, bb, rg, gb, rb in 0-65025): [a_r, a_g, a_b, b], each 1x1xhxw; a is 0 where
    ``near`` (float 1x1xhxw) is, so that b there is the window's mean matte."""
    scale = [1 / 255] * 4 + [1 / 65025] * 9
    means = g.op("Mul", means, g.const(np.reshape(scale, (1, 13, 1, 1)), np.float32))
    mr, mg, mb, mp, pr, pg, pb, srr, sgg, sbb, srg, sgb, srb = g.ops(
        "Split", [means], 13, axis=1, num_outputs=13
    )

    mul, sub, add = (partial(g.op, name) for name in ("Mul", "Sub", "Add"))
    e = g.f32(eps)
    cr, cg, cb = (sub(s, mul(m, mp)) for s, m in ((pr, mr), (pg, mg), (pb, mb)))
    rr = add(sub(srr, mul(mr, mr)), e)
    rg = sub(srg, mul(mr, mg))
    rb = sub(srb, mul(mr, mb))
    gg = add(sub(sgg, mul(mg, mg)), e)
    gb = sub(sgb, mul(mg, mb))
    bb = add(sub(sbb, mul(mb, mb)), e)
    i_rr = sub(mul(gg, bb), mul(gb, gb))
    i_rg = sub(mul(gb, rb), mul(rg, bb))
    i_rb = sub(mul(rg, gb), mul(gg, rb))
    i_gg = sub(mul(rr, bb), mul(rb, rb))
    i_gb = sub(mul(rb, rg), mul(rr, gb))
    i_bb = sub(mul(rr, gg), mul(rg, rg))
    det = add(add(mul(rr, i_rr), mul(rg, i_rg)), mul(rb, i_rb))
    inv_det = g.op("Reciprocal", det)
    a = [
        mul(mul(add(add(mul(i_1, cr), mul(i_2, cg)), mul(i_3, cb)), inv_det), near)
        for i_1, i_2, i_3 in ((i_rr, i_rg, i_rb), (i_rg, i_gg, i_gb), (i_rb, i_gb, i_bb))
    ]
    b = sub(sub(sub(mp, mul(a[0], mr)), mul(a[1], mg)), mul(a[2], mb))
    return [*a, b]


def upscale_model(radius: int = edges.GUIDED_RADIUS, eps: float = edges.GUIDED_EPS) -> Any:
    """The "upscale" graph (an onnx ModelProto)."""
    from onnx import helper

    g = _Graph()
    p = g.op("Unsqueeze", g.op("Cast", "matte", to=_FLOAT), g.axes(0, 1))  # 1x1xhxw, 0-255
    starts, ends, box, varies = _soft_box(g, p, 3 * radius + 2)
    # Fitted on the box's crop, as guided_upscale: the border the box filters reflect at
    # is the crop's (see the module's docstring).
    spatial = g.axes(2, 3)
    crop_p = g.op("Slice", p, starts, ends, spatial)
    guide = g.op("Slice", _nchw(g, "guide"), starts, ends, spatial)  # 1x3, 0-255
    cross = g.op("Gather", guide, g.const([1, 2, 0], np.int64), axis=1)  # g, b, r
    products = [g.op("Mul", guide, crop_p), g.op("Mul", guide, guide), g.op("Mul", guide, cross)]
    planes = g.op("Concat", guide, crop_p, *products, axis=1)
    # Windows where the matte does not vary keep a = 0 (edges.guided_upscale's "near").
    window = 2 * radius + 1
    near = g.op(
        "MaxPool",
        g.op("Slice", varies, starts, ends, spatial),
        kernel_shape=[window, window],
        pads=[radius] * 4,
    )
    coef = g.op("Concat", *_solve(g, _box_mean(g, planes, radius), eps, near), axis=1)
    # Back on the grid: [0, 0, y0, x0, 0, 0, h - y1, w - x1].
    grid = g.op("Shape", p, start=2, end=4)
    zeros = g.const([0, 0], np.int64)
    pads = g.op("Concat", zeros, starts, zeros, g.op("Sub", grid, ends), axis=0)
    coef = g.op("Pad", _box_mean(g, coef, radius), pads)
    a, b = g.ops("Split", [coef, g.const([3, 1], np.int64)], 2, axis=1)
    b = g.op("Mul", b, g.f32(255))
    # Outside the box the matte's plain enlargement; inside, b rounded to 8 bits where the
    # enlargement reaches across the box's border (guided_upscale's "flat").
    b8 = g.op("Floor", g.op("Clip", g.op("Add", b, g.f32(0.5)), g.f32(0), g.f32(255)))
    inside = g.op("Cast", box, to=_FLOAT)
    small = g.op("Concat", g.op("Mul", a, inside), b, g.op("Where", box, b8, p), inside, axis=1)
    big = _enlarge(g, small, "photo")
    k_r, k_g, k_b, q, flat, weight = g.ops("Split", [big], 6, axis=1, num_outputs=6)
    i_r, i_g, i_b = g.ops("Split", [_nchw(g, "photo")], 3, axis=1, num_outputs=3)
    # b first, then r, g, b: edge_kernels.apply_guided's order of float additions.
    for k, i in ((k_r, i_r), (k_g, i_g), (k_b, i_b)):
        q = g.op("Add", q, g.op("Mul", k, i))
    # The filter only where every sample weighed lies in the box (edges._footprint).
    q = g.op("Where", g.op("Greater", weight, g.f32(1 - 1e-5)), q, flat)
    g.nodes.append(helper.make_node("Squeeze", [_to_uint8(g, q), g.axes(0, 1)], ["alpha"]))
    return g.model(
        [
            helper.make_tensor_value_info("photo", _UINT8, ["H", "W", 3]),
            helper.make_tensor_value_info("matte", _UINT8, ["h", "w"]),
            helper.make_tensor_value_info("guide", _UINT8, ["h", "w", 3]),
        ],
        [helper.make_tensor_value_info("alpha", _UINT8, ["H", "W"])],
        "bgsvc_edge_upscale",
    )


def correct_model() -> Any:
    """The "correct" graph (an onnx ModelProto)."""
    from onnx import helper

    g = _Graph()
    lo, hi = edges.SOFT
    # Scaled before enlarging, as edges.correct hands the kernel f_hat * 255.
    small = g.op("Mul", g.op("Concat", _nchw(g, "f_hat"), _nchw(g, "b_hat"), axis=1), g.f32(255))
    f, b = g.ops("Split", [_enlarge(g, small, "photo")], 2, axis=1, num_outputs=2)
    a8 = g.op("Unsqueeze", g.op("Cast", "alpha", to=_FLOAT), g.axes(0, 1))
    a = g.op("Mul", a8, g.f32(1 / 255))
    photo8 = g.op("Transpose", "photo", perm=[2, 0, 1])
    photo = g.op("Unsqueeze", g.op("Cast", photo8, to=_FLOAT), g.axes(0))
    # F^ + a(I - aF^ - (1 - a)B^), in edge_kernels.correct's order.
    rest = g.op("Mul", g.op("Sub", g.f32(1), a), b)
    est = g.op("Add", f, g.op("Mul", a, g.op("Sub", g.op("Sub", photo, g.op("Mul", a, f)), rest)))
    soft = g.op("And", g.op("GreaterOrEqual", a8, g.f32(lo)), g.op("LessOrEqual", a8, g.f32(hi)))
    chosen = g.op(
        "Where",
        g.op("Squeeze", soft, g.axes(0)),
        g.op("Squeeze", _to_uint8(g, est), g.axes(0)),
        photo8,
    )
    g.nodes.append(helper.make_node("Transpose", [chosen], ["colour"], perm=[1, 2, 0]))
    return g.model(
        [
            helper.make_tensor_value_info("photo", _UINT8, ["H", "W", 3]),
            helper.make_tensor_value_info("alpha", _UINT8, ["H", "W"]),
            helper.make_tensor_value_info("f_hat", _FLOAT, ["h", "w", 3]),
            helper.make_tensor_value_info("b_hat", _FLOAT, ["h", "w", 3]),
        ],
        [helper.make_tensor_value_info("colour", _UINT8, ["H", "W", 3])],
        "bgsvc_edge_correct",
    )


@njit(cache=True, nogil=True)
def _write_soft(
    colour: np.ndarray, alpha: np.ndarray, soft: tuple[int, int], out: np.ndarray
) -> None:
    """``colour`` into ``out`` (any strides) where ``alpha`` is within ``soft``, in one pass:
    numpy's masked copyto took 120-190 ms at 12 MP, this 16."""
    lo, hi = soft
    h, w = alpha.shape
    for y in range(h):
        for x in range(w):
            if lo <= alpha[y, x] <= hi:
                for c in range(3):
                    out[y, x, c] = colour[y, x, c]


class EdgeGraphs:
    """Both graphs in ONNX Runtime sessions on ``providers`` (built once, in memory), with
    the CPU functions' contracts (imaging.edges) so that the pipeline can swap them. Safe
    to call from several threads at once: ORT's InferenceSession.run is."""

    def __init__(
        self,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        provider_options: Sequence[dict[str, str]] | None = None,
        session_options: Any = None,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        import onnxruntime as ort

        def session(model: Any) -> Any:
            return ort.InferenceSession(
                model.SerializeToString(),
                sess_options=session_options,
                providers=list(providers),
                provider_options=None if provider_options is None else list(provider_options),
            )

        self._upscale = session(upscale_model())
        self._correct = session(correct_model())
        # Calls the graphs failed and the CPU kernels ran instead (device memory exhausted
        # by a large photo, a driver fault): logged once, counted always (on_fallback).
        self.fallbacks = 0
        self._on_fallback = on_fallback
        self._lock = threading.Lock()
        # numba compiles per array layout: a photo's copy, or the RGB of the cutout's RGBA.
        colour, alpha = np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.uint8)
        for out in (colour.copy(), np.zeros((1, 1, 4), np.uint8)[..., :3]):
            _write_soft(colour, alpha, edges.SOFT, out)

    @property
    def providers(self) -> list[str]:
        """The providers the sessions really got, best first."""
        active: list[str] = self._upscale.get_providers()
        return active

    def upscale(self, matte: np.ndarray, photo: np.ndarray) -> np.ndarray:
        """edges.upscale_matte(matte, photo, refine=True)."""
        return self.upscale_matte(matte, photo)

    def upscale_matte(
        self, matte: np.ndarray, guide: np.ndarray, *, refine: bool = True, work_edge: int = 2048
    ) -> np.ndarray:
        """edges.upscale_matte, the full-resolution part on the sessions' provider."""
        h, w = guide.shape[:2]
        edge = min(work_edge, edges.FIT_EDGE)
        grid = edges._grid((matte.shape[1], matte.shape[0]), (w, h), edge)
        if not refine or min(grid) < edges.GUIDED_RADIUS:
            # The graph's border gathers need r grid pixels; a photo that small is cheap.
            return edges.upscale_matte(matte, guide, refine=refine, work_edge=work_edge)
        feeds = {
            "photo": np.ascontiguousarray(guide),
            "matte": np.ascontiguousarray(edges._resize(matte, grid)),
            "guide": np.ascontiguousarray(edges._resize(guide, grid)),
        }
        alpha = self._run(self._upscale, feeds)
        if alpha is None:
            return edges.upscale_matte(matte, guide, refine=refine, work_edge=work_edge)
        return alpha

    def correct(
        self,
        out: np.ndarray,
        pixels: np.ndarray,
        alpha: np.ndarray,
        f_hat: np.ndarray,
        b_hat: np.ndarray,
    ) -> np.ndarray:
        """edges.correct: writes the soft pixels' colour into ``out`` and returns it."""
        colour = self._run(self._correct, self._colour_feeds(pixels, alpha, f_hat, b_hat))
        if colour is None:
            return edges.correct(out, pixels, alpha, f_hat, b_hat)
        _write_soft(colour, alpha, edges.SOFT, out)
        return out

    def decontaminate(
        self,
        pixels: np.ndarray,
        alpha: np.ndarray,
        *,
        work_edge: int = 2048,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """edges.decontaminate: the multilevel estimate on the CPU (numba, on a copy of at
        most 1024 px), its full-resolution step on the sessions' provider."""
        if not cv2.inRange(alpha, *edges.SOFT).any():
            return pixels if out is None else out
        lo, hi = edges.ML_EDGE
        edge = min(work_edge, hi, max(lo, max(alpha.shape) // 4))
        f_hat, b_hat = edges.foreground_ml(pixels, alpha, edge)
        if out is None:
            # The graph's output is already the photo outside the soft pixels.
            return self._colour(pixels, alpha, f_hat, b_hat)
        return self.correct(out, pixels, alpha, f_hat, b_hat)

    def _colour(
        self, pixels: np.ndarray, alpha: np.ndarray, f_hat: np.ndarray, b_hat: np.ndarray
    ) -> np.ndarray:
        """The photo with the soft pixels' colour corrected."""
        colour = self._run(self._correct, self._colour_feeds(pixels, alpha, f_hat, b_hat))
        if colour is None:
            return edges.correct(pixels.copy(), pixels, alpha, f_hat, b_hat)
        return colour

    @staticmethod
    def _colour_feeds(
        pixels: np.ndarray, alpha: np.ndarray, f_hat: np.ndarray, b_hat: np.ndarray
    ) -> dict[str, np.ndarray]:
        return {
            "photo": np.ascontiguousarray(pixels),
            "alpha": np.ascontiguousarray(alpha),
            "f_hat": np.ascontiguousarray(f_hat, np.float32),
            "b_hat": np.ascontiguousarray(b_hat, np.float32),
        }

    def _run(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        """The graph's output, or None when ONNX Runtime failed the call."""
        try:
            out: np.ndarray = session.run(None, feeds)[0]
            return out
        except Exception as exc:  # ORT's own error types; the CPU kernels do the same work
            with self._lock:
                self.fallbacks += 1
                first = self.fallbacks == 1
            if self._on_fallback is not None:
                self._on_fallback()
            if first:
                log.warning(
                    "edge step: an ONNX graph failed (%s); such calls run on the CPU kernels",
                    exc,
                    exc_info=True,
                )
            return None
