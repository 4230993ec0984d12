"""The file:// backend: expiry sweep, publish under a killed writer, the periodic sweeper."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bgsvc.errors import StorageConfigError, StorageUnavailable
from bgsvc.storage import FilesystemStore, Sweeper, default_sweep_interval
from bgsvc.storage.filesystem import EMPTY_DIR_GRACE_S, TEMP_GRACE_S

TTL = 3600.0


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _visible(root: Path) -> list[str]:
    """Every path under ``root`` a reader could take for an object (no dot-names)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def test_objects_are_plain_files_named_by_their_key(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, TTL)
    store.put("jobs/j1/result.png", b"png", "image/png")
    assert (tmp_path / "jobs" / "j1" / "result.png").read_bytes() == b"png"
    assert _visible(tmp_path) == ["jobs/j1/result.png"]


def test_sweep_deletes_only_objects_older_than_the_ttl(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, TTL)
    for key in ("jobs/old/result.png", "jobs/new/result.png", "originals/old.jpg"):
        store.put(key, b"x", "image/png")
    _age(tmp_path / "jobs/old/result.png", TTL + 5)
    _age(tmp_path / "originals/old.jpg", TTL + 5)
    _age(tmp_path / "jobs/new/result.png", TTL - 60)

    assert store.sweep() == 2
    assert _visible(tmp_path) == ["jobs/new/result.png"]
    # The expired objects' sidecars went with them; the fresh one keeps its type.
    assert sorted(p.name for p in tmp_path.rglob(".*.meta")) == [".result.png.meta"]
    got = store.get("jobs/new/result.png")
    assert got is not None and got.content_type == "image/png"
    assert store.sweep() == 0


def test_sweep_clears_dead_writers_leftovers_but_not_live_ones(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, TTL)
    jobs = tmp_path / "jobs"
    (jobs / "dead").mkdir(parents=True)
    stale_tmp = jobs / "dead" / ".result.png.abc123.tmp"
    live_tmp = jobs / ".result.png.def456.tmp"
    orphan_meta = jobs / ".gone.png.meta"
    for path in (stale_tmp, live_tmp, orphan_meta):
        path.write_bytes(b"partial")
    _age(stale_tmp, TEMP_GRACE_S + 5)
    _age(orphan_meta, TEMP_GRACE_S + 5)
    empty_old = tmp_path / "empty-old"
    empty_new = tmp_path / "empty-new"
    empty_old.mkdir()
    empty_new.mkdir()
    _age(empty_old, EMPTY_DIR_GRACE_S + 5)

    assert store.sweep() == 0  # leftovers are not objects
    assert not stale_tmp.exists() and not orphan_meta.exists()
    assert live_tmp.exists()
    assert not empty_old.exists() and empty_new.exists() and tmp_path.is_dir()


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from bgsvc.storage import FilesystemStore

    root, stall = Path(sys.argv[1]), sys.argv[2]

    def wait_for_the_kill():
        print("stalled", flush=True)
        time.sleep(60)

    class HalfThenStall:
        # A file object that hands over 1 MiB, then blocks: the kill lands mid-copy.
        sent = False
        def read(self, size=-1):
            if self.sent:
                wait_for_the_kill()
            self.sent = True
            return b"N" * (1024 * 1024)

    if stall == "before_rename":
        real_replace = os.replace
        def replace(src, dst):
            if not str(dst).endswith(".meta"):
                wait_for_the_kill()
            real_replace(src, dst)
        os.replace = replace
        data = b"N" * (1024 * 1024)
    else:
        data = HalfThenStall()
    FilesystemStore(root, 3600).put("jobs/j1/result.png", data, "image/webp")
    """
)


@pytest.mark.parametrize("stall", ["mid_write", "before_rename"])
def test_a_writer_killed_mid_put_never_leaves_a_visible_object(tmp_path: Path, stall: str) -> None:
    store = FilesystemStore(tmp_path, TTL)
    store.put("jobs/j1/result.png", b"OLD", "image/png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path), stall],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    ) as writer:
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "stalled"
            # The new bytes are on disk, in full or in part, but not published yet.
            temps = list((tmp_path / "jobs" / "j1").glob(".result.png.*.tmp"))
            assert len(temps) == 1 and temps[0].stat().st_size >= 1024 * 1024
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL

    # Readers still get the whole previous object; the partial one is invisible.
    got = store.get("jobs/j1/result.png")
    assert got is not None and got.data == b"OLD"
    assert _visible(tmp_path) == ["jobs/j1/result.png"]
    # Once old enough to be surely dead, the sweep removes the leftover.
    _age(temps[0], TEMP_GRACE_S + 5)
    store.sweep()
    assert not temps[0].exists()


def test_a_store_that_cannot_make_its_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageConfigError, match="result directory"):
        FilesystemStore(tmp_path / "file" / "results", TTL)


def test_a_write_the_filesystem_refuses_is_storage_unavailable(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path, TTL)
    store.put("a", b"x", "text/plain")
    with pytest.raises(StorageUnavailable) as caught:
        store.put("a/b", b"x", "text/plain")  # "a" is a file, not a directory
    assert caught.value.status == 503 and caught.value.retry_after is not None
    assert list(tmp_path.rglob("*.tmp")) == []


class _FlakyStore(FilesystemStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root, TTL)
        self.calls = 0

    def sweep(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise OSError("disk went away")
        return super().sweep()


def test_the_sweeper_keeps_sweeping_after_a_failed_sweep(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _FlakyStore(tmp_path)
    store.put("jobs/old/result.png", b"x", "image/png")
    _age(tmp_path / "jobs/old/result.png", TTL + 5)
    sweeper = Sweeper(store, interval_s=0.02)
    with caplog.at_level(logging.ERROR, logger="bgsvc.storage.sweep"):
        sweeper.start()
        try:
            deadline = time.monotonic() + 10
            while (tmp_path / "jobs/old/result.png").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            sweeper.stop()
    assert not (tmp_path / "jobs/old/result.png").exists()
    assert store.calls >= 2
    assert "storage sweep of" in caplog.text and "disk went away" in caplog.text


def test_the_sweep_interval_follows_the_ttl_within_bounds() -> None:
    assert default_sweep_interval(24 * 3600) == 600
    assert default_sweep_interval(600) == 60
    assert default_sweep_interval(2) == 1
