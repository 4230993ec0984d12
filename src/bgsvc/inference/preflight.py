"""The start-up checks of :func:`bgsvc.inference.loader.preflight`, run in a fresh
interpreter for a process that will fork (gunicorn's arbiter).

onnxruntime must never be loaded in a process that forks workers: every forked child
then aborts at its normal exit (``terminate called after throwing an instance of
'std::system_error' what(): Invalid argument``, SIGABRT), because ORT's static teardown
runs against thread state that only existed in the parent. Measured here: importing
onnxruntime before ``fork()`` was enough to make the child abort; without it the child
exits 0.
"""

from __future__ import annotations

import subprocess
import sys

# Start-up of a fresh interpreter plus the onnxruntime import and the sha256 of the model
# files (the default model is 88 MB): seconds, far below this.
_TIMEOUT_S = 300.0


def check_in_child() -> str | None:
    """Run the checks in a child interpreter with this process's environment; the one
    line to show when they fail, else None."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bgsvc.inference.preflight"],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"start-up checks did not finish within {_TIMEOUT_S:g} s"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"start-up checks failed with status {done.returncode}"


def main() -> int:
    from bgsvc.config import get_settings
    from bgsvc.errors import NO_ONNXRUNTIME, BgsvcError, is_missing_onnxruntime

    try:
        from bgsvc.inference.loader import preflight

        preflight(get_settings())
    except BgsvcError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return 2
    except ModuleNotFoundError as exc:
        if not is_missing_onnxruntime(exc):
            raise
        print(NO_ONNXRUNTIME, file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
