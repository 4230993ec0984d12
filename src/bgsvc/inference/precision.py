"""Which engine and precision a model runs at on the CPU: measured, and gated by quality.

Every precision this CPU executes natively (bf16, f16, per OpenVINO's capabilities) is
tried on a fixed calibration set (``calibration/``, five photographs): its mattes are
compared with ONNX Runtime's float32 ones, the reference, and its forward pass is timed.
A precision passes the gate when, on *every* photo, IoU(alpha > 0.5) >= 0.995 and the
mean absolute difference is <= 1 level (of 255). The fastest of the reference and the
passing precisions is run. The trials are stored beside the prepared model, keyed by the
model file, its profile, the CPU, the OpenVINO version and the thread count, so only the
first start on a machine pays for them (seconds), and concurrent workers run them once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from bgsvc.errors import ModelError

log = logging.getLogger(__name__)

GATE_VERSION = 1
MIN_IOU = 0.995
MAX_MAE = 1.0
CALIBRATION_DIR = Path(__file__).parent / "calibration"
REFERENCE = "onnxruntime-f32"


@dataclass(frozen=True)
class Trial:
    """One candidate on the calibration set: median forward seconds and its worst photo."""

    engine: str
    precision: str
    seconds: float
    iou_min: float = 1.0
    mae_max: float = 0.0
    error: str = ""

    @property
    def label(self) -> str:
        """``engine-precision``, as logs and reasons name it."""
        return f"{self.engine}-{self.precision}"

    @property
    def passed(self) -> bool:
        """Whether the candidate may run: it worked and agreed with float32 on every photo."""
        return not self.error and self.iou_min >= MIN_IOU and self.mae_max <= MAX_MAE

    def describe(self) -> str:
        """A short account for the reason line."""
        if self.error:
            return f"{self.label} failed ({self.error})"
        verdict = "passed" if self.passed else "failed the gate"
        return (
            f"{self.label} {self.seconds * 1000:.1f} ms, IoU >= {self.iou_min:.4f}, "
            f"MAE <= {self.mae_max:.2f} ({verdict})"
        )


def calibration_images(directory: Path = CALIBRATION_DIR) -> tuple[list[Image.Image], str]:
    """The calibration photos (RGB) and a digest of their bytes."""
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".jpg")
    if not files:
        raise ModelError(f"No calibration photos in {directory}.")
    digest = hashlib.sha256()
    images = []
    for path in files:
        data = path.read_bytes()
        digest.update(hashlib.sha256(data).digest())
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return images, digest.hexdigest()[:12]


def agreement(reference: np.ndarray, matte: np.ndarray) -> tuple[float, float]:
    """(IoU of alpha > 0.5, mean absolute difference in levels) of two uint8 mattes."""
    ref = reference > 127
    got = matte > 127
    union = int(np.count_nonzero(ref | got))
    iou = 1.0 if union == 0 else int(np.count_nonzero(ref & got)) / union
    mae = float(np.mean(np.abs(reference.astype(np.int16) - matte.astype(np.int16))))
    return iou, mae


class Runner(Protocol):
    """What a trial needs of an engine (BaseEngine has all three)."""

    def preprocess(self, rgb: Image.Image) -> np.ndarray: ...

    def run(self, tensor: np.ndarray) -> np.ndarray: ...

    def postprocess(self, raw: np.ndarray, size: tuple[int, int]) -> np.ndarray: ...


@dataclass(frozen=True)
class Candidate:
    """Something to try: how to build it (may raise ModelError), then its pre-processing,
    forward pass and post-processing apart, so only the forward pass is timed."""

    engine: str
    precision: str
    build: Callable[[], Runner]


def _measure(runner: Runner, images: Sequence[Image.Image]) -> tuple[list[np.ndarray], float]:
    tensors = [runner.preprocess(img) for img in images]
    runner.run(tensors[0])  # the first call pays for allocations: not timed
    mattes, seconds = [], []
    for img, tensor in zip(images, tensors, strict=True):
        started = time.perf_counter()
        raw = runner.run(tensor)
        seconds.append(time.perf_counter() - started)
        mattes.append(runner.postprocess(raw, img.size))
    return mattes, statistics.median(seconds)


def run_trials(
    reference: Candidate, candidates: Sequence[Candidate], images: Sequence[Image.Image]
) -> list[Trial]:
    """The reference's trial first, then each candidate's against it."""
    runner = reference.build()
    expected, ref_seconds = _measure(runner, images)
    del runner  # its memory is not needed while the candidates run
    trials = [Trial(reference.engine, reference.precision, ref_seconds)]
    for candidate in candidates:
        try:
            built = candidate.build()
            mattes, seconds = _measure(built, images)
        except ModelError as exc:
            trials.append(Trial(candidate.engine, candidate.precision, 0.0, error=exc.message))
            continue
        except Exception as exc:  # a runtime's own error on a model it compiled
            trials.append(Trial(candidate.engine, candidate.precision, 0.0, error=str(exc)))
            continue
        del built
        pairs = [agreement(r, m) for r, m in zip(expected, mattes, strict=True)]
        trials.append(
            Trial(
                candidate.engine,
                candidate.precision,
                seconds,
                iou_min=min(iou for iou, _ in pairs),
                mae_max=max(mae for _, mae in pairs),
            )
        )
    return trials


def choose(trials: Sequence[Trial], *, reference_allowed: bool = True) -> tuple[Trial, str]:
    """The fastest passing trial (the reference, ``trials[0]``, always passes) and the
    reason line that says so. Without ``reference_allowed`` the reference only judges;
    when no candidate passes, the first element is returned and the caller picks a floor."""
    reference, candidates = trials[0], list(trials[1:])
    passing = [t for t in candidates if t.passed]
    if reference_allowed:
        passing.append(reference)
    measured = "; ".join(t.describe() for t in trials)
    if not passing:
        return reference, f"no reduced precision passed the quality gate ({measured})"
    best = min(passing, key=lambda t: t.seconds)
    return best, f"fastest that passes the quality gate ({measured})"


def cached_trials(
    path: Path | None, measure: Callable[[], list[Trial]]
) -> tuple[list[Trial], bool]:
    """The trials stored at ``path``, or ``measure()``'s, stored there; and whether they
    came from the store. Workers starting together measure once: the rest wait."""
    if path is None:
        return measure(), False
    found = _read(path)
    if found is not None:
        return found, True
    with _locked(path.with_name(path.name + ".lock")):
        found = _read(path)
        if found is not None:
            return found, True
        trials = measure()
        tmp = path.with_name(f".{path.name}.{time.time_ns()}.part")
        try:
            tmp.write_text(json.dumps([asdict(t) for t in trials], indent=1))
            tmp.replace(path)
        except OSError as exc:
            # Measured all the same: only the next start pays again.
            log.warning("could not store the precision trials at %s (%s)", path, exc)
            tmp.unlink(missing_ok=True)
        return trials, False


def _read(path: Path) -> list[Trial] | None:
    try:
        rows = json.loads(path.read_text())
        return [Trial(**row) for row in rows]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the unreadable precision trials at %s (%s)", path, exc)
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as exc:
        log.warning("no lock for the precision trials at %s (%s): measuring unlocked", path, exc)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
