"""Without onnxruntime (it is an extra: bgsvc[cpu] or bgsvc[gpu]) every start path fails
with one line naming both extras, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgsvc.inference.preflight import check_in_child

# What Python raises when the package is not installed at all.
SHIM = 'raise ModuleNotFoundError("No module named \'onnxruntime\'", name="onnxruntime")\n'


@pytest.fixture
def without_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    package = tmp_path / "shim" / "onnxruntime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(SHIM)
    path = os.pathsep.join([str(package.parent), *sys.path])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("BGSVC_MODEL_DIR", str(tmp_path / "models"))
    return dict(os.environ)


def _names_both_extras(line: str) -> bool:
    return "onnxruntime is not installed" in line and "bgsvc[cpu]" in line and "bgsvc[gpu]" in line


def test_serve_without_onnxruntime_fails_with_one_line_naming_the_extras(
    without_onnxruntime: dict[str, str],
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bgsvc", "serve", "--port", "1"],
        env=without_onnxruntime,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bgsvc: error: "), done.stderr
    assert _names_both_extras(lines[0])


def test_gunicorn_preflight_without_onnxruntime_names_the_extras(
    without_onnxruntime: dict[str, str],
) -> None:
    error = check_in_child()
    assert error is not None and _names_both_extras(error)


def test_other_missing_modules_are_not_blamed_on_onnxruntime() -> None:
    from bgsvc.errors import is_missing_onnxruntime

    assert is_missing_onnxruntime(ModuleNotFoundError("x", name="onnxruntime.capi"))
    assert not is_missing_onnxruntime(ModuleNotFoundError("x", name="onnx"))
    assert not is_missing_onnxruntime(ImportError("x", name="onnxruntime"))
