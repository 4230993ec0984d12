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
