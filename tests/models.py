"""Generated ONNX models for tests and benchmarks: real graphs, no weights to download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TINY_SIZE = 32


def build_tiny_model(path: Path, size: int = TINY_SIZE) -> Path:
    """A real ONNX graph shaped like ISNet's: bright pixels become foreground.

    output = sigmoid(8 * mean_c(input)), where input is (pixel - 128) / 256.
    """
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])
    gain = helper.make_tensor("gain", TensorProto.FLOAT, [], [8.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=1),
        helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
        helper.make_node("Sigmoid", ["scaled"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [inp], [out], initializer=[gain, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_slow_model(path: Path, size: int = 128, channels: int = 32, layers: int = 4) -> Path:
    """A real conv net shaped like the tiny model (1x3xSxS in, 1x1xSxS out) whose forward
    pass costs about layers x size² x channels² x 18 FLOPs: tens to hundreds of ms on one
    thread, so a few requests keep a node busy for a while without any sleep in the app."""
    rng = np.random.default_rng(0)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])
    inits = []
    nodes = []
    prev, prev_ch = "input", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, prev_ch, 3, 3)) * 0.05).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, prev_ch = f"r{i}", channels
    head = (rng.standard_normal((1, channels, 1, 1)) * 0.05).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes.append(helper.make_node("Conv", [prev, "head"], ["logits"]))
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    graph = helper.make_graph(nodes, "slow", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# Grey levels for build_hang_model (a uniform image of that grey, e.g. PNG): at or below
# 200 no extra work (normal photos); each level above roughly doubles the spin.
HANG_THRESHOLD_GREY = 200
HANG_GAIN = 180.0
# The watchdog test needs a stall that outlasts its 1.5 s request budget on any CPU: 220 took
# 1.3 s on a fast one (AMX Xeon), so 222, about 4x that (each level doubles the loop).
STALL_GREY = 222
HANG_GREY = 255  # effectively forever (exp(38) iterations)


def build_hang_model(path: Path, size: int = TINY_SIZE, dim: int = 16) -> Path:
    """The tiny model's graph plus an ONNX Loop whose trip count comes from the input:
    exp(HANG_GAIN x relu(brightness - threshold)) - 1, where brightness is the mean of
    the normalised input. Normal images (mean grey <= HANG_THRESHOLD_GREY) skip it and
    run in well under a millisecond; a white image keeps ONNX Runtime busy for good.
    Same input/output contract as build_tiny_model; the loop's result is multiplied by
    zero into the output, so the graph cannot drop it."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["x_in", "w"], ["xw"]),
            helper.make_node("Tanh", ["xw"], ["x_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [1, dim]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [1, dim]),
        ],
    )
    threshold = (HANG_THRESHOLD_GREY - 128) / 256  # the imgly profile's normalisation
    inits = [
        helper.make_tensor("gain", TensorProto.FLOAT, [], [8.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("threshold", TensorProto.FLOAT, [], [threshold]),
        helper.make_tensor("hang_gain", TensorProto.FLOAT, [], [HANG_GAIN]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("true", TensorProto.BOOL, [], [True]),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full((1, dim), 0.5, np.float32), "x0"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=1),
        helper.make_node("ReduceMean", ["input"], ["brightness"], keepdims=0),
        helper.make_node("Sub", ["brightness", "threshold"], ["excess"]),
        helper.make_node("Relu", ["excess"], ["over"]),
        helper.make_node("Mul", ["over", "hang_gain"], ["exponent"]),
        helper.make_node("Exp", ["exponent"], ["grown"]),
        helper.make_node("Sub", ["grown", "one"], ["trips_f"]),
        helper.make_node("Cast", ["trips_f"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "true", "x0"], ["spun"], body=body),
        helper.make_node("ReduceSum", ["spun"], ["spun_sum"], keepdims=0),
        helper.make_node("Mul", ["spun_sum", "zero"], ["nothing"]),
        helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "nothing"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "hang", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class StubSession:
    """Just enough of an InferenceSession for Engine.__init__, to exercise the engine's
    pre- and post-processing without a model."""

    def __init__(self, size: int) -> None:
        self.size = size

    def _arg(self, name: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(name=name, type="tensor(float)", shape=[1, 3, self.size, self.size])

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def get_inputs(self) -> list[Any]:
        return [self._arg("input")]

    def get_outputs(self) -> list[Any]:
        return [self._arg("output")]


def build_profile_model(
    path: Path,
    size: int,
    transform: str = "clip",
    *,
    outputs: int = 1,
    main_output: int = 0,
    fp16: bool = False,
    opset: int = 15,
) -> Path:
    """A tiny graph shaped like one profile's model family, at an older opset (the
    shipped ISNet is opset 15, so wrapping has to convert it).

    The main map is 8 x mean_c(input), then per transform: ``clip`` models emit its
    sigmoid (already in [0, 1]), ``minmax`` and ``sigmoid`` models emit it raw. The other
    ``outputs`` are side maps (deep-supervision heads) that differ from the main one, so
    reading the wrong output shows. ``fp16``: float16 input and output, as fp16 exports.
    """
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    np_type = np.float16 if fp16 else np.float32
    inp = helper.make_tensor_value_info("input", elem, [1, 3, size, size])
    names = [f"out{i}" for i in range(outputs)]
    outs = [helper.make_tensor_value_info(n, elem, [1, 1, size, size]) for n in names]
    inits = [
        numpy_helper.from_array(np.array(8.0, np_type), "gain"),
        numpy_helper.from_array(np.array(-3.0, np_type), "side_gain"),
    ]
    # opset < 18: ReduceMean takes its axes as an attribute (converted when wrapping).
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "gain"], ["logits"]),
    ]
    main = "logits"
    if transform == "clip":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["prob"]))
        main = "prob"
    for i, name in enumerate(names):
        if i == main_output:
            nodes.append(helper.make_node("Identity", [main], [name]))
        else:
            nodes.append(helper.make_node("Mul", ["mean", "side_gain"], [f"side{i}"]))
            nodes.append(helper.make_node("Sigmoid", [f"side{i}"], [name]))
    graph = helper.make_graph(nodes, "profile", [inp], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
