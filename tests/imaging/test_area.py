from __future__ import annotations

import numpy as np
import pytest

from bgsvc.imaging import area
from bgsvc.imaging.opencv import cv2
from bgsvc.imaging.resize import shrink


def _cases(n: int) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
    rng = np.random.default_rng(11)
    cases: list[tuple[tuple[int, ...], tuple[int, int]]] = [
        ((1153, 1734, 3), (1024, 681)),  # a 2 MP photo to the edge step's grid
        ((1024, 1024), (1024, 681)),  # the model's matte to that grid: one axis alone
        ((1080, 1920, 4), (1024, 576)),
        ((3, 5, 3), (3, 3)),
    ]
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(3, 200, 2))
        depth = int(rng.choice([0, 1, 3, 4]))
        shape = (h, w, depth) if depth else (h, w)
        size = (int(rng.integers(w // 2 + 1, w + 1)), int(rng.integers(h // 2 + 1, h + 1)))
        cases.append((shape, size))
    return cases


@pytest.mark.parametrize(("shape", "size"), _cases(40))
def test_the_compiled_area_average_is_opencvs_within_a_level(
    shape: tuple[int, ...], size: tuple[int, int]
) -> None:
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, np.uint8)
    assert area.applies(img, size)
    got = area.shrink(img, size)
    expected = cv2.resize(img, size, interpolation=cv2.INTER_AREA).reshape(got.shape)
    assert got.shape == (size[1], size[0], *shape[2:]) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_a_region_is_the_same_region_of_the_whole() -> None:
    img = np.random.default_rng(1).integers(0, 256, (301, 457, 3), np.uint8)
    whole = area.shrink(img, (300, 200))
    for rows, cols in ((slice(0, 200), slice(0, 300)), (slice(17, 18), slice(5, 299))):
        assert np.array_equal(area.shrink(img, (300, 200), (rows, cols)), whole[rows, cols])
    part = area.shrink(img, (300, 200), (slice(150, 200), slice(250, 300)))
    assert np.array_equal(part, whole[150:, 250:])


def test_the_rgb_of_an_rgba_decode_is_read_in_place_and_gives_the_rgb_result() -> None:
    rgba = np.random.default_rng(2).integers(0, 256, (120, 170, 4), np.uint8)
    view = rgba[..., :3]
    rows, depth = area._rows(view)
    assert depth == 4 and np.shares_memory(rows, rgba)
    assert np.array_equal(area.shrink(view, (100, 70)), area.shrink(rgba, (100, 70))[..., :3])
    # Views whose pixels are not the first channels of their base's rows are copied, and
    # still right: a later start, every other channel, rows and columns swapped.
    whole = area.shrink(rgba, (100, 70))
    later = rgba[..., 1:]
    assert not np.shares_memory(area._rows(later)[0], rgba)
    assert np.array_equal(area.shrink(later, (100, 70)), whole[..., 1:])
    assert np.array_equal(area.shrink(rgba[..., ::2], (100, 70)), whole[..., ::2])
    square = rgba[:120, :120]
    swapped = square.transpose(1, 0, 2)[..., :3]
    expected = cv2.resize(np.ascontiguousarray(swapped), (100, 70), interpolation=cv2.INTER_AREA)
    assert np.abs(area.shrink(swapped, (100, 70)).astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    ("shape", "size", "applies"),
    [
        ((100, 100), (51, 51), True),
        ((100, 100), (50, 50), False),  # a whole factor: OpenCV's fast path
        ((100, 100), (100, 100), True),
        ((100, 100), (120, 90), False),  # larger on one axis
        ((2, 100), (2, 60), False),  # too few rows for three taps
    ],
)
def test_the_compiled_average_takes_factors_below_two_only(
    shape: tuple[int, int], size: tuple[int, int], applies: bool
) -> None:
    assert area.applies(np.zeros(shape, np.uint8), size) is applies
    # Only 8-bit images: a float image goes to OpenCV, whatever its size.
    assert not area.applies(np.zeros(shape, np.float32), size)


def test_shrink_below_a_factor_of_two_matches_opencv_and_above_it_keeps_its_two_steps() -> None:
    img = np.random.default_rng(3).integers(0, 256, (900, 1300, 3), np.uint8)
    near = shrink(img, (1000, 700))
    opencv = cv2.resize(img, (1000, 700), interpolation=cv2.INTER_AREA)
    assert np.abs(near.astype(int) - opencv).max() <= 1
    far = shrink(img, (400, 300))
    steps = cv2.resize(
        cv2.resize(img, None, fx=1 / 3, fy=1 / 3, interpolation=cv2.INTER_AREA),
        (400, 300),
        interpolation=cv2.INTER_LINEAR,
    )
    assert np.array_equal(far, steps)
