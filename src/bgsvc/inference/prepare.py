"""Model preparation for the runtime: derived copies made once and cached beside the model.

The fetched file stays exactly as verified (its sha256 is checked before anything is
derived from it); derived files live in ``<model_dir>/.prepared`` and carry the source's
hash in their names, so a new source can never be paired with a stale copy.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bgsvc.errors import ModelError

log = logging.getLogger(__name__)

PREPARED_DIRNAME = ".prepared"

# onnx's TensorProto data types, spelled out so this module imports onnx only when it works.
_FLOAT = 1
_FLOAT16 = 10


def prepared_dir(model_dir: Path) -> Path:
    """Where derived model files live."""
    return model_dir / PREPARED_DIRNAME


def source_key(path: Path, sha256: str | None) -> str:
    """A short, content-derived key for a source file: its known sha256 when the registry
    has one, else size and mtime (custom files are not hashed on every start)."""
    if sha256:
        return sha256[:16]
    stat = path.stat()
    raw = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def hardware_key() -> str:
    """Optimised ORT graphs embed CPU-specific layouts (NCHWc blocking, ISA-specific fused
    kernels), so their cache key includes the machine, its CPU flags and ORT's version."""
    import onnxruntime as ort

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        flags = platform.processor()
    digest = hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:8]
    return f"ort{ort.__version__}-{digest}"


def atomic_build(target: Path, build: Callable[[Path], None], *, replace: bool = False) -> Path:
    """Run ``build(tmp)`` and move the result to ``target`` atomically, so concurrent
    workers starting together never see (or load) a half-written file. An existing
    ``target`` is kept unless ``replace``; it is only replaced once the build succeeded."""
    if target.is_file() and not replace:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        build(tmp)
        # mkstemp makes 0600 files; model files are read by other users (the container's
        # non-root user reads what the build stage fetched as root).
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def has_fp16_weights(path: Path) -> bool:
    """Whether the model stores any float16 initializer (cheap: no external data loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_type == _FLOAT16 for t in model.graph.initializer)


def convert_fp16_to_fp32(src: Path, dst: Path) -> None:
    """Rewrite a float16 model as float32: initializers, Constant values, Cast targets and
    declared tensor types. ORT's CPU provider has no fast fp16 convolutions on x86, so an
    fp16 graph runs slower there than the same weights in fp32 (benchmarks/RESULTS.md)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == _FLOAT16:
            widened = numpy_helper.to_array(tensor).astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(widened, tensor.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == _FLOAT16:
                widened = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(widened, attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT16:
                # The casts become float->float no-ops; ORT's optimiser removes them.
                attr.i = _FLOAT
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.type.tensor_type.elem_type == _FLOAT16:
            info.type.tensor_type.elem_type = _FLOAT
    # fp16 converters append their boundary Casts at the end of the node list; ORT copes,
    # but the ONNX checker (our guard against a botched conversion) wants a sorted graph.
    ordered = topological_order(list(graph.node))
    del graph.node[:]
    graph.node.extend(ordered)
    check_valid(model, f"The float32 copy of {src.name}")
    onnx.save(model, str(dst))


def check_valid(model: Any, what: str) -> None:
    """ONNX's checker on a model this package rewrote: the guard against a botched
    rewrite, as a ModelError naming ``what``."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{what} is not a valid model: {exc}") from exc


def topological_order(nodes: list[Any]) -> list[Any]:
    """``nodes`` (onnx NodeProtos) sorted so every node follows its inputs' producers;
    the original order is kept wherever it already is valid."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    deps: list[set[int]] = [
        {producer[name] for name in node.input if name in producer} for node in nodes
    ]
    users: dict[int, list[int]] = {}
    for i, needed in enumerate(deps):
        for j in needed:
            users.setdefault(j, []).append(i)
    remaining = [len(d) for d in deps]
    ready = [i for i, n in enumerate(remaining) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ModelError("The model's graph has a cycle; it cannot be converted.")
    return [nodes[i] for i in order]


def fp32_copy(src: Path, key: str, out_dir: Path) -> Path:
    """The cached float32 copy of ``src`` (made on first use); ``src`` itself when it has
    no float16 weights."""
    if not has_fp16_weights(src):
        return src
    target = out_dir / f"{src.stem}-{key}-fp32.onnx"
    if not target.is_file():
        log.info("converting %s to float32 once (cached at %s)", src.name, target)
    return atomic_build(target, lambda tmp: convert_fp16_to_fp32(src, tmp))


def optimized_path(src: Path, key: str, out_dir: Path, provider: str) -> Path:
    """Where ORT writes (and later finds) the fully optimised graph for this source,
    provider, ORT version and CPU."""
    tag = provider.removesuffix("ExecutionProvider").lower()
    stem = src.stem if key in src.stem else f"{src.stem}-{key}"
    return out_dir / f"{stem}-{tag}-{hardware_key()}-opt.onnx"


def int8_copy(
    fp32: Path,
    key: str,
    out_dir: Path,
    profile: Any,
    calibration_dir: Path | None,
) -> Path:
    """The cached static int8 QDQ copy of the float32 model ``fp32`` (calibrated once)."""
    from bgsvc.inference.quantize import calibration_images, quantize_qdq, to_tensor

    images, images_key = calibration_images(calibration_dir)
    target = out_dir / f"{fp32.stem.removesuffix('-fp32')}-{key}-int8-{images_key}.onnx"
    if target.is_file():
        return target
    log.info(
        "quantising %s to int8 once on %d photos (cached at %s)", fp32.name, len(images), target
    )
    tensors = [to_tensor(img, profile) for img in images]
    return atomic_build(target, lambda tmp: quantize_qdq(fp32, tmp, tensors))
