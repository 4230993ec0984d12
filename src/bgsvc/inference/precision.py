"""Which engine and precision a model runs at on the CPU: measured, and gated by quality.

Every precision this CPU executes natively (bf16, f16, per OpenVINO's capabilities) is
tried on a fixed calibration set (``calibration/``, four photographs): its mattes are
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

GATE_VERSION = 2
MIN_IOU = 0.995
MAX_MAE = 1.0
CALIBRATION_DIR = Path(__file__).parent / "calibration"
# How long a starting worker waits for another one's trials before measuring itself.
LOCK_WAIT_S = 900.0


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


def _calibration_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".jpg")
    if not files:
        raise ModelError(f"No calibration photos in {directory}.")
    return files


def calibration_digest(directory: Path = CALIBRATION_DIR) -> str:
    """A digest of the calibration photos' bytes (part of the stored trials' key)."""
    digest = hashlib.sha256()
    for path in _calibration_files(directory):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def calibration_images(directory: Path = CALIBRATION_DIR) -> tuple[list[Image.Image], str]:
    """The calibration photos (RGB) and the digest of their bytes."""
    images = []
    for path in _calibration_files(directory):
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    return images, calibration_digest(directory)


def reference_path(trials_path: Path) -> Path:
    """Where the float32 matte of the first calibration photo is stored beside the trials."""
    return trials_path.with_suffix(".reference.png")


def store_reference(matte: np.ndarray, trials_path: Path) -> None:
    """Store the float32 reference matte (before the trials file, which vouches for it)."""
    target = reference_path(trials_path)
    tmp = target.with_name(f".{target.name}.{time.time_ns()}.part")
    try:
        Image.fromarray(matte, "L").save(tmp, "PNG")
        tmp.replace(target)
    except OSError as exc:
        log.warning("could not store the reference matte at %s (%s)", target, exc)
        tmp.unlink(missing_ok=True)


def agrees_with_reference(engine: Runner, trials_path: Path) -> bool:
    """Whether ``engine`` (as compiled for serving, perhaps from a cached blob) still
    passes the gate on the first calibration photo against the stored float32 matte; True
    when no reference is stored (nothing to check against)."""
    try:
        with Image.open(reference_path(trials_path)) as img:
            expected = np.asarray(img.convert("L"))
    except (OSError, ValueError):
        return True
    with Image.open(_calibration_files(CALIBRATION_DIR)[0]) as img:
        photo = img.convert("RGB")
    matte = engine.postprocess(engine.run(engine.preprocess(photo)), photo.size)
    if matte.shape != expected.shape:
        return False
    iou, mae = agreement(expected, matte)
    return iou >= MIN_IOU and mae <= MAX_MAE


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
) -> tuple[list[Trial], list[np.ndarray]]:
    """The reference's trial first, then each candidate's against it; and the
    reference's mattes."""
    runner = reference.build()
    expected, ref_seconds = _measure(runner, images)
    del runner  # its memory is not needed while the candidates run
    trials = [Trial(reference.engine, reference.precision, ref_seconds)]
    for candidate in candidates:
        try:
            built = candidate.build()
            mattes, seconds = _measure(built, images)
        except Exception as exc:  # ModelError, or a runtime's own error on a model it compiled
            error = exc.message if isinstance(exc, ModelError) else str(exc)
            trials.append(Trial(candidate.engine, candidate.precision, 0.0, error=error))
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
    return trials, expected


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
        return reference, f"no OpenVINO precision passed the quality gate ({measured})"
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
        failed = [t for t in trials if t.error]
        if failed:
            # A failure may be passing (memory, a compile racing others): measure again
            # at the next start rather than rule the precision out for good.
            log.warning("not storing precision trials with failures: %s", failed[0].describe())
            return trials, False
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
def _locked(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block; after ``wait_s`` (a worker stuck while
    measuring) or where the filesystem has no locks, the block runs unlocked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as exc:
        log.warning("no lock for the precision trials at %s (%s): measuring unlocked", path, exc)
        yield
        return
    with handle:
        deadline = time.monotonic() + wait_s
        held = False
        while not held:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    log.warning(
                        "waited %.0f s for the lock at %s: measuring unlocked", wait_s, path
                    )
                    break
                time.sleep(0.2)
            except OSError as exc:  # ENOLCK and friends: a filesystem without locks
                log.warning("cannot lock %s (%s): measuring unlocked", path, exc)
                break
        try:
            yield
        finally:
            if held:
                fcntl.flock(handle, fcntl.LOCK_UN)
