"""Imports point one way: every module of bgsvc imports on its own, as the first one."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import bgsvc

# Each module imported as the first bgsvc module of a fresh set: a cycle between packages
# fails here ("partially initialized module") even when the app's own import order hides it.
PROBE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "bgsvc" or m.startswith("bgsvc.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=1).strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def every_module() -> list[str]:
    # __main__ runs the command line when imported: that is its job.
    found = pkgutil.walk_packages(bgsvc.__path__, prefix="bgsvc.")
    return sorted(info.name for info in found if info.name != "bgsvc.__main__")


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = every_module()
    assert "bgsvc.batches.service" in names and "bgsvc.jobs.runner" in names
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE, *names],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_error_hierarchy_imports_no_web_framework() -> None:
    # Errors are raised by the CLI, the job runner and the stores too: rendering them as
    # HTTP answers is bgsvc.error_handlers' job, so bgsvc.errors must stay importable alone.
    probe = (
        "import sys, bgsvc.errors\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'fastapi'))\n"
        "assert not web, web"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
