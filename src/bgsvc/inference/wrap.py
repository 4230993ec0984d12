"""The model wrapped with its per-pixel pre- and post-processing, as one ONNX graph.

The wrapped graph takes the decoded image as it is (uint8, HxWx3, any size) and returns
the matte at the image's size (uint8, HxW): resize to the profile's square input
(plain bilinear, as ``imaging.resize``), normalise with the profile's mean/std,
the model (only the profile's output), the profile's output transform, quantise to
uint8 at the model's resolution, resize back (bilinear, antialiased like Pillow's when
the photo is smaller than the model's input). The work then runs in ONNX Runtime's
threads (on the GPU under CUDA) instead of Python, numpy and Pillow.

Layout: the image is transposed to NCHW *before* the resizes. ORT's CUDA Resize-18
implements antialiasing for uint8 on 2-D and NCHW 4-D tensors (outer scales 1) but
answers NOT_IMPLEMENTED for NHWC, and runs a 3-D HWC tensor through its trilinear
kernel; the CPU provider handles NCHW at least as fast as HWC. Opset 18 exactly (not
19+): ORT's CUDA provider registers Resize up to 18 (19 came in 2026), so a newer opset
would put every Resize of the model on the CPU.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bgsvc.errors import ModelError
from bgsvc.inference.prepare import atomic_build, check_valid, topological_order
from bgsvc.inference.registry import Profile

log = logging.getLogger(__name__)

# Bump whenever the graph built here changes: the file name carries it, so a changed
# wrapper never loads a stale file, and the result cache's version changes with it.
WRAP_VERSION = 4
OPSET = 18
INPUT = "image"
OUTPUT = "matte"

_UINT8 = 2
_FLOAT = 1
_FLOAT16 = 10
_P = "bgsvc_wrap/"  # prefix of every name added here; the model's own names stay as they are


def profile_key(profile: Profile) -> str:
    """A short digest of what the wrapper bakes in from the profile (custom models can
    override the input size and the output read without their file changing)."""
    raw = (
        f"{WRAP_VERSION}|{profile.input_size}|{profile.mean}|{profile.std}|"
        f"{profile.output_index}|{profile.output_transform}"
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:8]


def wrapped_path(src: Path, key: str, out_dir: Path, profile: Profile) -> Path:
    """Where the wrapped copy of ``src`` lives: source key, wrapper version and profile
    digest in the name."""
    stem = src.stem if key in src.stem else f"{src.stem}-{key}"
    return out_dir / f"{stem}-graph{WRAP_VERSION}-{profile_key(profile)}.onnx"


def wrapped_copy(src: Path, key: str, out_dir: Path, profile: Profile) -> Path:
    """The cached wrapped copy of ``src`` (built once, atomically)."""
    target = wrapped_path(src, key, out_dir, profile)
    if not target.is_file():
        log.info("wrapping %s with its pre/post-processing once (cached at %s)", src.name, target)
    return atomic_build(target, lambda tmp: wrap_file(src, tmp, profile))


def wrap_file(src: Path, dst: Path, profile: Profile) -> None:
    """Write the wrapped model of ``src`` to ``dst``."""
    import onnx

    model = wrap(onnx.load(str(src)), profile)
    onnx.save(model, str(dst))


def wrap(model: Any, profile: Profile) -> Any:
    """The wrapped ModelProto of ``model`` (an onnx ModelProto); raises ModelError when
    the model cannot be wrapped (the engine then runs it unwrapped)."""
    from onnx import helper

    model = _at_opset(model)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"Only single-input models can be wrapped ({len(inputs)} inputs).")
    model_in = inputs[0]
    in_type = model_in.type.tensor_type.elem_type
    if in_type not in (_FLOAT, _FLOAT16):
        raise ModelError("Only float or float16 model inputs can be wrapped.")
    if profile.output_index >= len(graph.output):
        raise ModelError(f"The model has no output #{profile.output_index}.")
    model_out = graph.output[profile.output_index]
    out_type = model_out.type.tensor_type.elem_type
    if out_type not in (_FLOAT, _FLOAT16):
        raise ModelError("Only float or float16 model outputs can be wrapped.")

    names = _all_names(graph)
    if INPUT in names or OUTPUT in names or any(n.startswith(_P) for n in names):
        raise ModelError(f"The model already uses the names {INPUT!r}/{OUTPUT!r}.")

    nodes, consts = _preprocess(profile, model_in.name, in_type)
    kept = _needed_nodes(list(graph.node), model_out.name)
    post_nodes, post_consts = _postprocess(profile, model_out.name, out_type)

    image = helper.make_tensor_value_info(INPUT, _UINT8, ["height", "width", 3])
    matte = helper.make_tensor_value_info(OUTPUT, _UINT8, ["height", "width"])
    used = {name for node in kept for name in _node_inputs(node)}
    new_graph = helper.make_graph(
        # fp16 converters leave boundary Casts at the end; the checker wants them sorted.
        topological_order([*nodes, *kept, *post_nodes]),
        graph.name or "model",
        [image],
        [matte],
        initializer=[
            *consts,
            *(t for t in graph.initializer if t.name in used),
            *post_consts,
        ],
        value_info=list(graph.value_info),
    )
    wrapped = helper.make_model(
        new_graph,
        opset_imports=list(model.opset_import),
        producer_name="bgsvc",
        doc_string=f"bgsvc wrapper v{WRAP_VERSION} around {graph.name or 'model'}",
    )
    wrapped.ir_version = model.ir_version
    wrapped.functions.extend(model.functions)
    check_valid(wrapped, "The wrapped model")
    return wrapped


def _at_opset(model: Any) -> Any:
    from onnx import version_converter

    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version >= OPSET:
        return model
    try:
        # Antialiased Resize needs opset 18; the converter rewrites the model's own ops
        # whose signature changed since (Reduce*, Split, Pad...).
        return version_converter.convert_version(model, OPSET)
    except Exception as exc:  # the converter raises its own untyped errors
        raise ModelError(
            f"Could not convert the model from opset {version} to {OPSET}: {exc}"
        ) from exc


def _const(name: str, values: Any, dtype: Any) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=dtype), _P + name)


def _preprocess(profile: Profile, model_input: str, in_type: int) -> tuple[list[Any], list[Any]]:
    from onnx import helper

    size = profile.input_size
    inv_std = (1.0 / np.asarray(profile.std, dtype=np.float32)).astype(np.float32)
    shift = (np.asarray(profile.mean, dtype=np.float32) * inv_std).astype(np.float32)
    consts = [
        _const("axis0", [0], np.int64),
        _const("in_size", [1, 3, size, size], np.int64),
        # x * (1/std) - mean/std, the same float32 arithmetic as the numpy path.
        _const("scale", inv_std.reshape(1, 3, 1, 1), np.float32),
        _const("shift", shift.reshape(1, 3, 1, 1), np.float32),
    ]
    normalised = model_input if in_type == _FLOAT else _P + "normalised"
    nodes = [
        helper.make_node("Shape", [INPUT], [_P + "hw"], start=0, end=2),
        helper.make_node("Transpose", [INPUT], [_P + "chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", [_P + "chw", _P + "axis0"], [_P + "nchw"]),
        # Resized in float and rounded, as OpenCV's uint8 resize of the numpy path rounds:
        # ORT's uint8 Resize truncates (0.49 levels lower on average).
        helper.make_node("Cast", [_P + "nchw"], [_P + "nchw_f"], to=_FLOAT),
        helper.make_node(
            "Resize",
            [_P + "nchw_f", "", "", _P + "in_size"],
            [_P + "resized"],
            mode="linear",
            # Plain bilinear, as the numpy path (imaging.resize.model_input) and the
            # models' training.
            antialias=0,
        ),
        helper.make_node("Round", [_P + "resized"], [_P + "pixels"]),
        helper.make_node("Mul", [_P + "pixels", _P + "scale"], [_P + "scaled"]),
        helper.make_node("Sub", [_P + "scaled", _P + "shift"], [normalised]),
    ]
    if in_type == _FLOAT16:
        nodes.append(helper.make_node("Cast", [normalised], [model_input], to=_FLOAT16))
    return nodes, consts


def _postprocess(profile: Profile, model_output: str, out_type: int) -> tuple[list[Any], list[Any]]:
    from onnx import helper

    consts = [
        _const("zero", 0.0, np.float32),
        _const("levels", 255.0, np.float32),
        _const("half", 0.5, np.float32),
    ]
    nodes = []
    raw = model_output
    if out_type == _FLOAT16:
        nodes.append(helper.make_node("Cast", [raw], [_P + "raw32"], to=_FLOAT))
        raw = _P + "raw32"
    nodes += [
        helper.make_node("Shape", [raw], [_P + "map_hw"], start=-2),
        helper.make_node("Reshape", [raw, _P + "map_hw"], [_P + "map"]),
    ]
    transform = profile.output_transform
    if transform == "minmax":
        consts.append(_const("one", 1.0, np.float32))
        nodes += [
            helper.make_node("ReduceMin", [_P + "map"], [_P + "lo"], keepdims=0),
            helper.make_node("ReduceMax", [_P + "map"], [_P + "hi"], keepdims=0),
            helper.make_node("Sub", [_P + "hi", _P + "lo"], [_P + "range"]),
            helper.make_node("Greater", [_P + "range", _P + "zero"], [_P + "spread"]),
            # A flat map (hi == lo) divides 0 by 1: an all-zero matte, as the numpy path.
            helper.make_node("Where", [_P + "spread", _P + "range", _P + "one"], [_P + "den"]),
            helper.make_node("Sub", [_P + "map", _P + "lo"], [_P + "shifted"]),
            helper.make_node("Div", [_P + "shifted", _P + "den"], [_P + "alpha"]),
        ]
    elif transform == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", [_P + "map"], [_P + "alpha"]))
    else:  # clip: the output is already in [0, 1]; the Clip below bounds it
        nodes.append(helper.make_node("Identity", [_P + "map"], [_P + "alpha"]))
    nodes += [
        helper.make_node("Mul", [_P + "alpha", _P + "levels"], [_P + "x255"]),
        helper.make_node("Add", [_P + "x255", _P + "half"], [_P + "rounded"]),
        helper.make_node("Clip", [_P + "rounded", _P + "zero", _P + "levels"], [_P + "clipped"]),
        # Quantised at the model's resolution, then resized and rounded to 8 bits, as the
        # numpy path does (in float: ORT's uint8 Resize truncates).
        helper.make_node("Floor", [_P + "clipped"], [_P + "small"]),
        helper.make_node(
            "Resize",
            [_P + "small", "", "", _P + "hw"],
            [_P + "matte_f"],
            mode="linear",
            # Antialiased like Pillow's BILINEAR when the photo is smaller than the
            # model's input; Pillow renormalises the filter over in-image pixels.
            antialias=1,
            exclude_outside=1,
        ),
        helper.make_node("Round", [_P + "matte_f"], [_P + "matte_r"]),
        helper.make_node("Cast", [_P + "matte_r"], [OUTPUT], to=_UINT8),
    ]
    return nodes, consts


def _node_inputs(node: Any) -> set[str]:
    """A node's inputs, plus the outer-scope names its subgraphs (If, Loop) read."""
    names = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                names |= _node_inputs(inner)
    return names


def _needed_nodes(nodes: list[Any], output: str) -> list[Any]:
    """The nodes ``output`` depends on, in their original order: the side outputs'
    heads (deep supervision maps) are dropped, not just left unread."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    needed: set[int] = set()
    stack = [output]
    while stack:
        index = producer.get(stack.pop())
        if index is None or index in needed:
            continue
        needed.add(index)
        stack.extend(_node_inputs(nodes[index]))
    return [node for i, node in enumerate(nodes) if i in needed]


def _all_names(graph: Any) -> set[str]:
    names = {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    names |= {t.name for t in graph.initializer}
    for node in graph.node:
        names |= {n for n in [*node.input, *node.output] if n}
    return names


def pruned_path(src: Path, key: str, out_dir: Path, output_index: int) -> Path:
    """Where the copy of ``src`` that computes only output #``output_index`` lives."""
    stem = src.stem if key in src.stem else f"{src.stem}-{key}"
    return out_dir / f"{stem}-out{output_index}.onnx"


def pruned_copy(src: Path, key: str, out_dir: Path, output_index: int) -> Path:
    """The cached copy of ``src`` pruned to the one output the service reads (built once,
    atomically). Runtimes that compute every declared output (OpenVINO does) otherwise
    spend a third of the forward pass on deep-supervision maps nobody reads."""
    target = pruned_path(src, key, out_dir, output_index)
    if not target.is_file():
        log.info("pruning %s to output #%d once (cached at %s)", src.name, output_index, target)
    return atomic_build(target, lambda tmp: _prune_file(src, tmp, output_index))


def _prune_file(src: Path, dst: Path, output_index: int) -> None:
    import onnx

    onnx.save(prune(onnx.load(str(src)), output_index), str(dst))


def prune(model: Any, output_index: int) -> Any:
    """``model`` (an onnx ModelProto) with only output #``output_index`` and what it needs."""
    import onnx

    graph = model.graph
    if output_index >= len(graph.output):
        raise ModelError(f"The model has no output #{output_index}.")
    kept_output = onnx.ValueInfoProto()
    kept_output.CopyFrom(graph.output[output_index])
    kept = _needed_nodes(list(graph.node), kept_output.name)
    used = {name for node in kept for name in _node_inputs(node)}
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    graph.output.append(kept_output)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    check_valid(model, "The pruned model")
    return model
