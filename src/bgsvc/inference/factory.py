"""The one place that decides which engine runs a model, and says why.

- A CUDA host, ``BGSVC_ENGINE=onnxruntime`` or ``BGSVC_CPU_INT8``: ONNX Runtime.
- Otherwise (``auto`` on a CPU host, or ``openvino``): OpenVINO at the fastest precision
  that passes the quality gate of ``inference.precision``, or at ``BGSVC_PRECISION``.
- No OpenVINO, no native bf16/f16 (under ``auto``), a model it cannot compile, or no
  precision passing the gate: ONNX Runtime float32, with one log line saying why.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

from bgsvc.errors import ModelError, ProviderUnavailable
from bgsvc.inference import openvino_engine, precision, prepare, wrap
from bgsvc.inference.base import PIPELINE_VERSION, BaseEngine
from bgsvc.inference.engine import Engine, RuntimeOptions
from bgsvc.inference.fetch import verify
from bgsvc.inference.openvino_engine import CompileOptions, OpenVinoEngine
from bgsvc.inference.providers import CPU, choose_providers
from bgsvc.inference.registry import ModelSpec

log = logging.getLogger(__name__)


def load_engine(spec: ModelSpec, path: Path, runtime: RuntimeOptions) -> BaseEngine:
    """The engine for ``spec`` (its file at ``path``, verified here) per ``runtime``."""
    if runtime.engine == "onnxruntime":
        return Engine.load(spec, path, runtime, reason="BGSVC_ENGINE=onnxruntime")
    import onnxruntime as ort

    providers = choose_providers(
        runtime.provider, ort.get_available_providers(), tensorrt=runtime.gpu.tensorrt
    )
    if providers[0] != CPU:
        if runtime.engine == "openvino":
            raise ProviderUnavailable(
                "BGSVC_ENGINE=openvino runs on the CPU only: set BGSVC_PROVIDER=cpu, or "
                "BGSVC_ENGINE=auto for ONNX Runtime on the GPU."
            )
        return Engine.load(spec, path, runtime, reason=f"a GPU host: ONNX Runtime {providers[0]}")
    if runtime.cpu_int8:
        return Engine.load(spec, path, runtime, reason="BGSVC_CPU_INT8=true: ONNX Runtime int8")
    verify(spec, path)
    if not openvino_engine.available():
        return _fallback(spec, path, runtime, "the openvino package is not installed")
    try:
        return _load_openvino(spec, path, runtime)
    except ModelError as exc:
        return _fallback(spec, path, runtime, f"OpenVINO failed: {exc.message}")
    except Exception as exc:  # a broken OpenVINO install raises errors of its own
        return _fallback(spec, path, runtime, f"OpenVINO failed: {type(exc).__name__}: {exc}")


def _fallback(spec: ModelSpec, path: Path, runtime: RuntimeOptions, why: str) -> BaseEngine:
    log.warning("model %s: %s; running ONNX Runtime float32", spec.name, why)
    return Engine.load(spec, path, runtime, reason=f"{why}; ONNX Runtime f32")


def _load_openvino(spec: ModelSpec, path: Path, runtime: RuntimeOptions) -> BaseEngine:
    key = prepare.source_key(path, spec.sha256)
    model_file, cache_dir = _prepared(spec, path, key, runtime)
    options = CompileOptions(
        threads=runtime.intra_op_threads,
        requests=runtime.concurrency,
        # Per source: OpenVINO's own blob check looks at the path, size and mtime only.
        cache_dir=cache_dir / "cache" / key if cache_dir is not None else None,
    )

    def compile_at(at: str, reason: str, *, cached: bool = True) -> OpenVinoEngine:
        return OpenVinoEngine.load(
            spec,
            model_file,
            replace(options, precision=at, cache_dir=options.cache_dir if cached else None),
            # Results differ between precisions: cached results must too.
            version=f"{key}:{model_file.name}:openvino-{at}",
            reason=reason,
        )

    if runtime.precision != "auto":
        return compile_at(runtime.precision, f"BGSVC_PRECISION={runtime.precision} (ungated)")
    native = openvino_engine.native_precisions()
    if not native and runtime.engine == "auto":
        why = "this CPU executes neither bf16 nor f16 natively"
        return Engine.load(spec, path, runtime, reason=f"{why}; ONNX Runtime f32")
    # Under BGSVC_ENGINE=openvino its float32 competes too, and is gated like the rest.
    tried = native + (["f32"] if runtime.engine == "openvino" else [])
    trials_path = _trials_path(spec, key, model_file, cache_dir, runtime, tried)
    trials, stored = precision.cached_trials(
        trials_path, lambda: _measure(spec, model_file, tried, options, runtime, trials_path)
    )
    best, reason = precision.choose(trials, reference_allowed=runtime.engine == "auto")
    if stored:
        reason += " [stored trials]"
    if best.engine == "onnxruntime":
        if runtime.engine == "openvino":
            return _fallback(spec, path, runtime, reason)
        return Engine.load(spec, path, runtime, reason=reason)
    engine = compile_at(best.precision, reason)
    if trials_path is None or precision.agrees_with_reference(engine, trials_path):
        return engine
    # The compiled blob does not give what the trials measured (damaged, or stale):
    # compile afresh once, without the cache, before giving up on OpenVINO.
    log.warning("model %s: cached OpenVINO blob disagrees with float32; recompiling", spec.name)
    if options.cache_dir is not None:
        shutil.rmtree(options.cache_dir, ignore_errors=True)
    engine = compile_at(best.precision, reason, cached=False)
    if precision.agrees_with_reference(engine, trials_path):
        return engine
    return _fallback(spec, path, runtime, f"OpenVINO {best.precision} disagrees with float32")


def _prepared(
    spec: ModelSpec, path: Path, key: str, runtime: RuntimeOptions
) -> tuple[Path, Path | None]:
    """The float32 file pruned to the used output (the verified file itself, which
    OpenVINO compiles too, when no copy can be written), and the writable directory for
    OpenVINO's caches (None when there is none: everything is redone at each start)."""
    model_file = path
    if runtime.prepared_dir is not None:
        try:
            model_file = prepared_file(spec, path, key, runtime.prepared_dir)
        except OSError as exc:
            log.warning("could not cache prepared copies of %s (%s); compiling it as is", path, exc)
    cache_dir = runtime.openvino_cache_dir
    if cache_dir is None and runtime.prepared_dir is not None:
        cache_dir = runtime.prepared_dir / "openvino"
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            probe = cache_dir / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            log.warning(
                "OpenVINO cache %s is not writable (%s): compiling and measuring at every "
                "start; set BGSVC_OPENVINO_CACHE_DIR to a writable directory",
                cache_dir,
                exc,
            )
            cache_dir = None
    return model_file, cache_dir


def prepared_file(spec: ModelSpec, path: Path, key: str, prepared_dir: Path) -> Path:
    """The file OpenVINO compiles: the float32 copy pruned to the output the service reads
    (made once; ``bgsvc models fetch`` makes it ahead, e.g. in an image build)."""
    fp32 = prepare.fp32_copy(path, key, prepared_dir)
    return wrap.pruned_copy(fp32, key, prepared_dir, spec.profile.output_index)


def _trials_path(
    spec: ModelSpec,
    key: str,
    model_file: Path,
    cache_dir: Path | None,
    runtime: RuntimeOptions,
    tried: list[str],
) -> Path | None:
    if cache_dir is None:
        return None
    parts = [
        # The source's content (a custom file's size and mtime when it has no hash) is in
        # the prepared file's name; not in the verified file's, compiled where none is.
        model_file.stem if key in model_file.stem else f"{model_file.stem}-{key}",
        wrap.profile_key(spec.profile),
        prepare.hardware_key(),
        f"ov{openvino_engine.version()}",
        f"t{runtime.intra_op_threads}",
        "-".join(tried),
        precision.calibration_digest(),
        f"gate{precision.GATE_VERSION}",
        # The stored reference matte comes out of the engines' pre/post-processing.
        f"p{PIPELINE_VERSION}",
    ]
    return cache_dir / ("trials-" + "-".join(parts) + ".json")


def _measure(
    spec: ModelSpec,
    model_file: Path,
    tried: list[str],
    options: CompileOptions,
    runtime: RuntimeOptions,
    trials_path: Path | None,
) -> list[precision.Trial]:
    """ONNX Runtime float32 as the reference, then each native precision, on the
    calibration photos. Runs once per machine and model; the result is stored."""
    import onnxruntime as ort

    from bgsvc.inference.engine import session_options

    images, _ = precision.calibration_images()
    log.info(
        "model %s: measuring %s against float32 on %d calibration photos (once)",
        spec.name,
        ", ".join(tried),
        len(images),
    )

    def reference() -> precision.Runner:
        session = ort.InferenceSession(
            str(model_file), sess_options=session_options(runtime), providers=[CPU]
        )
        return Engine(spec, session, 0.0)

    def compiled(at: str) -> precision.Runner:
        single = CompileOptions(at, options.threads, 1, options.cache_dir)
        return OpenVinoEngine.load(spec, model_file, single, version="trial", reason="trial")

    candidates = [
        precision.Candidate("openvino", at, lambda at=at: compiled(at))  # type: ignore[misc]
        for at in tried
    ]
    reference_candidate = precision.Candidate("onnxruntime", "f32", reference)
    trials, expected = precision.run_trials(reference_candidate, candidates, images)
    if trials_path is not None:
        # What every later start checks its compiled blob against.
        precision.store_reference(expected[0], trials_path)
    return trials
