"""The before/after edge crop (README, docs/api.md): a 12 MP photo through the default
model, put on a saturated colour once with the plain bilinear matte and the photo's own
colours, once with the edge step (guided enlargement and decontamination), and the same
crop of both side by side in docs/img/edges-before-after.png.

    .venv/bin/python -m benchmarks.edge_crop [--photo chelsea] [--crop x,y,w,h]

The photo is scikit-image's sample enlarged to 12 MP (the only photographs that ship
offline; benchmarks/images.py), so the fine detail is what the enlargement kept.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from benchmarks.images import upscaled_jpeg

OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "edges-before-after.png"
BACKDROP = "#1f4fff"


def softest_window(remover: Any, data: bytes, options_type: Any, side: float = 0.12) -> str:
    """x,y,w,h (fractions) of the square window with the most outline: soft pixels,
    weighted by how much of both subject and background it shows."""
    import numpy as np

    result = remover.remove(data, options_type(channels="alpha", refine=True))
    matte = np.asarray(Image.open(io.BytesIO(result.output.body)).convert("L"), np.float32)
    soft = ((matte > 24) & (matte < 232)).astype(np.float32)
    opaque = (matte >= 232).astype(np.float32)
    clear = (matte <= 24).astype(np.float32)
    h, w = soft.shape
    win_w, win_h = round(w * side), round(w * side)
    best, where = -1.0, (0, 0)
    for y in range(0, h - win_h, win_h // 4):
        for x in range(0, w - win_w, win_w // 4):
            area = (slice(y, y + win_h), slice(x, x + win_w))
            # An outline: subject and background both in view, and soft pixels between.
            score = float(soft[area].sum()) * min(
                float(opaque[area].mean()), float(clear[area].mean())
            )
            if score > best:
                best, where = score, (x, y)
    return f"{where[0] / w},{where[1] / h},{win_w / w},{win_h / h}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default="chelsea")
    parser.add_argument(
        "--crop", default=None, help="x,y,w,h as fractions (default: the softest edge)"
    )
    parser.add_argument("--scale", type=int, default=1, help="enlarge the crop (nearest)")
    args = parser.parse_args()

    from bgsvc.config import Settings
    from bgsvc.inference.loader import load_engines
    from bgsvc.options import RemovalOptions, parse_color
    from bgsvc.pipeline import Remover

    settings = Settings()
    remover = Remover(dict(load_engines(settings)), settings)
    photo = upscaled_jpeg(args.photo, 12.0)
    colour = parse_color(BACKDROP)
    crop = args.crop or softest_window(remover, photo.data, RemovalOptions)
    panels = []
    for refine in (False, True):
        options = RemovalOptions(format="png", bg_color=colour, refine=refine, decontaminate=refine)
        result = remover.remove(photo.data, options)
        image = Image.open(io.BytesIO(result.output.body)).convert("RGB")
        x, y, w, h = (float(v) for v in crop.split(","))
        box = (
            round(x * image.width),
            round(y * image.height),
            round((x + w) * image.width),
            round((y + h) * image.height),
        )
        panel = image.crop(box)
        if args.scale > 1:
            panel = panel.resize(
                (panel.width * args.scale, panel.height * args.scale), Image.Resampling.NEAREST
            )
        panels.append(panel)
    gap = 8
    sheet = Image.new("RGB", (panels[0].width * 2 + gap, panels[0].height + 28), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, label) in enumerate(
        zip(
            panels,
            ("before: bilinear matte, photo's colours", "after: refine + decontaminate"),
            strict=True,
        )
    ):
        left = i * (panel.width + gap)
        sheet.paste(panel, (left, 28))
        draw.text((left + 4, 8), label, fill="black")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(OUT, optimize=True)
    print(f"{OUT} ({photo.width}x{photo.height} photo, crop {box}, {OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
