"""The benchmark's images: real photographs from scikit-image's bundled samples, upscaled
with Lanczos to fixed sizes (0.3 MP .. 12 MP) and saved as JPEG, plus duplicates.

Bundled samples need no download, so a fresh clone builds the same set offline.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# (sample, megapixels): every photo appears at a different size, the spread the issue names.
FULL_SET: tuple[tuple[str, float], ...] = (
    ("astronaut", 0.3),
    ("coffee", 1.0),
    ("chelsea", 2.0),
    ("rocket", 4.0),
    ("astronaut", 8.0),
    ("coffee", 12.0),
    ("chelsea", 0.5),
    ("rocket", 2.0),
)
QUICK_SET: tuple[tuple[str, float], ...] = (("chelsea", 2.0), ("astronaut", 0.3), ("coffee", 4.0))
# Held out from int8 calibration, used for the IoU check.
# (The service's own default calibration set, bgsvc.inference.quantize.SAMPLE_PHOTOS.)
CALIBRATION = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "coins")
HELD_OUT = ("chelsea", "coffee", "camera", "retina")

JPEG_QUALITY = 90


@dataclass(frozen=True)
class BenchImage:
    """One request body: a JPEG of a real photograph at a known size."""

    name: str
    megapixels: float
    width: int
    height: int
    data: bytes

    @property
    def digest(self) -> str:
        """Short content hash (duplicates share it)."""
        return hashlib.sha256(self.data).hexdigest()[:12]


def sample(name: str) -> Image.Image:
    """A scikit-image sample photo as RGB."""
    from skimage import data

    pixels = getattr(data, name)()
    img = Image.fromarray(pixels)
    return img.convert("RGB")


def size_for(aspect: float, megapixels: float) -> tuple[int, int]:
    """Width and height of an image with ``aspect`` (w/h) and about ``megapixels``."""
    pixels = megapixels * 1_000_000
    height = math.sqrt(pixels / aspect)
    return max(1, round(height * aspect)), max(1, round(height))


def upscaled_jpeg(name: str, megapixels: float) -> BenchImage:
    """``name`` resized with Lanczos to ``megapixels`` and encoded as JPEG."""
    src = sample(name)
    size = size_for(src.width / src.height, megapixels)
    img = src.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return BenchImage(name, megapixels, size[0], size[1], buf.getvalue())


def build_set(
    spec: tuple[tuple[str, float], ...], cache_dir: Path | None = None, duplicates: int = 2
) -> list[BenchImage]:
    """The images of ``spec`` (cached as files in ``cache_dir``), then the first
    ``duplicates`` of them again: identical bytes, as repeat uploads are."""
    images: list[BenchImage] = []
    for name, mp in spec:
        path = cache_dir / f"{name}-{mp:g}mp.jpg" if cache_dir else None
        if path is not None and path.is_file():
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
            images.append(BenchImage(name, mp, w, h, data))
            continue
        image = upscaled_jpeg(name, mp)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image.data)
        images.append(image)
    return images + images[:duplicates]


def two_megapixel(images: list[BenchImage]) -> BenchImage:
    """The 2 MP JPEG the latency target is stated for."""
    return min(images, key=lambda im: abs(im.megapixels - 2.0))
