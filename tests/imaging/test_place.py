from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bgsvc.errors import InvalidParameter
from bgsvc.imaging.compose import Box, foreground_box
from bgsvc.imaging.place import place
from bgsvc.options import Placement, parse_placement


def scene() -> tuple[Image.Image, np.ndarray]:
    """A 200x100 canvas with a 20x10 opaque red subject at (10, 5)."""
    rgb = np.zeros((100, 200, 3), dtype=np.uint8)
    rgb[5:15, 10:30] = (220, 20, 20)
    mask = np.zeros((100, 200), dtype=np.uint8)
    mask[5:15, 10:30] = 255
    return Image.fromarray(rgb), mask


def near(box: Box | None, want: Box) -> bool:
    assert box is not None
    got = (box.left, box.top, box.width, box.height)
    wanted = (want.left, want.top, want.width, want.height)
    return all(abs(a - b) <= 1 for a, b in zip(got, wanted, strict=True))


def test_scale_fills_that_share_of_the_canvas_and_centres_by_default() -> None:
    rgb, mask = scene()
    out_rgb, out_mask = place(rgb, mask, parse_placement("50%", None) or Placement())
    # 50% of the canvas along the tighter side: height 50 of 100, width 100 of 200.
    assert near(foreground_box(out_mask), Box(50, 25, 100, 50))
    assert out_rgb.size == rgb.size and out_mask.shape == mask.shape
    assert np.asarray(out_rgb)[50, 100].tolist() == [220, 20, 20]


def test_position_alone_moves_the_subject_without_resizing() -> None:
    rgb, mask = scene()
    _, out_mask = place(rgb, mask, parse_placement(None, "100% 0%") or Placement())
    assert near(foreground_box(out_mask), Box(180, 0, 20, 10))
    _, centred = place(rgb, mask, parse_placement(None, "center") or Placement())
    assert near(foreground_box(centred), Box(90, 45, 20, 10))


def test_scale_with_original_position_keeps_the_subjects_centre() -> None:
    rgb, mask = scene()
    _, out_mask = place(rgb, mask, parse_placement("20%", "original") or Placement())
    # Factor 0.2 * min(10, 10) = 2: 40x20 around the old centre (20, 10); off the canvas
    # on the top left, so what is left starts at the edge.
    assert near(foreground_box(out_mask), Box(0, 0, 40, 20))


def test_nothing_to_place_without_a_subject_or_options() -> None:
    rgb, _ = scene()
    empty = np.zeros((100, 200), dtype=np.uint8)
    same_rgb, same_mask = place(rgb, empty, Placement(0.5, 0.5, 0.5))
    assert same_rgb is rgb and same_mask is empty
    assert parse_placement(None, None) is None and parse_placement("original", "original") is None


@pytest.mark.parametrize(
    ("scale", "position"),
    [("5%", None), ("101%", None), ("half", None), (None, "left"), (None, "10% 20% 30%")],
)
def test_bad_scale_or_position_is_refused(scale: str | None, position: str | None) -> None:
    with pytest.raises(InvalidParameter):
        parse_placement(scale, position)


def test_opencv_runs_on_the_calling_thread_only() -> None:
    # Stage threads are budgeted one core each; OpenCV's own pool would spread every resize
    # over all of them.
    from bgsvc.imaging.opencv import cv2

    assert cv2.getNumThreads() == 1
