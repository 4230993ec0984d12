from __future__ import annotations

import numpy as np
import pytest
from benchmarks.matting import (
    Sample,
    alpha_metrics,
    colour_error,
    make_sample,
    unknown_band,
)

from bgsvc.imaging.edges import decontaminate, upscale_matte
from bgsvc.imaging.opencv import cv2
from bgsvc.imaging.resize import shrink

# A quarter-scale set: 800 x 600 photos, the matte at 256 x 256 (about the 12 MP photo's
# ratio to the model's 1024 x 1024).
SIZE = (800, 600)
MODEL = 256


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [make_sample(kind, SIZE, model_edge=MODEL) for kind in ("green", "busy")]


def test_guided_upsampling_cuts_alpha_mse_and_gradient_error_by_a_third(
    samples: list[Sample],
) -> None:
    for s in samples:
        band = unknown_band(s.alpha)
        plain = alpha_metrics(upscale_matte(s.matte, s.image, refine=False), s.alpha, band)
        guided = alpha_metrics(upscale_matte(s.matte, s.image), s.alpha, band)
        assert guided["mse"] <= 0.7 * plain["mse"], s.name
        assert guided["grad"] <= 0.7 * plain["grad"], s.name


def test_decontamination_halves_the_colour_error_on_strands_and_edges(
    samples: list[Sample],
) -> None:
    for s in samples:
        alpha = upscale_matte(s.matte, s.image)
        estimate = decontaminate(s.image, alpha)
        assert colour_error(estimate, s, "edges") <= 0.5 * colour_error(s.image, s, "edges")


def test_decontamination_halves_the_colour_error_under_the_wide_translucent_veil(
    samples: list[Sample],
) -> None:
    # The veil has no opaque neighbour of its own colour: what lies behind it comes from
    # the clear background around it (without that, the error fell by a quarter). Over
    # clutter that background is trusted less, and the cut is smaller.
    for s, share in zip(samples, (0.5, 0.6), strict=True):
        estimate = decontaminate(s.image, upscale_matte(s.matte, s.image))
        assert colour_error(estimate, s, "veil") <= share * colour_error(s.image, s, "veil")


def test_outputs_have_the_photo_size_and_uint8(samples: list[Sample]) -> None:
    s = samples[0]
    alpha = upscale_matte(s.matte, s.image)
    assert alpha.shape == s.image.shape[:2] and alpha.dtype == np.uint8
    colour = decontaminate(s.image, alpha)
    assert colour.shape == s.image.shape and colour.dtype == np.uint8


def test_decontamination_keeps_opaque_pixels_exactly(samples: list[Sample]) -> None:
    s = samples[0]
    alpha = upscale_matte(s.matte, s.image)
    colour = decontaminate(s.image, alpha)
    opaque = alpha == 255
    assert opaque.any()
    assert np.array_equal(colour[opaque], s.image[opaque])


def test_unrefined_upscale_is_opencv_bilinear(samples: list[Sample]) -> None:
    s = samples[1]
    expected = cv2.resize(s.matte, SIZE, interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(upscale_matte(s.matte, s.image, refine=False), expected)


def box(img: np.ndarray) -> np.ndarray:
    from bgsvc.imaging import edges

    k = 2 * edges.GUIDED_RADIUS + 1
    return cv2.boxFilter(img, -1, (k, k), borderType=cv2.BORDER_REFLECT)


def plain_guided_coefficients(guide: np.ndarray, p: np.ndarray, eps: float) -> list[np.ndarray]:
    """He and Sun's colour guided filter written out in numpy, plane by plane (the oracle)."""
    r, g, b = (np.ascontiguousarray(guide[..., i]) for i in range(3))
    mr, mg, mb, mp = (box(x) for x in (r, g, b, p))
    cov = np.stack([box(x * p) - m * mp for x, m in ((r, mr), (g, mg), (b, mb))], -1)
    planes = (r, g, b)
    means = (mr, mg, mb)
    sigma = np.empty((*p.shape, 3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            sigma[..., i, j] = box(planes[i] * planes[j]) - means[i] * means[j]
    sigma += eps * np.eye(3, dtype=np.float32)
    a = np.linalg.solve(sigma, cov[..., None])[..., 0]
    b0 = mp - a[..., 0] * mr - a[..., 1] * mg - a[..., 2] * mb
    return [box(np.ascontiguousarray(x)) for x in (a[..., 0], a[..., 1], a[..., 2], b0)]


def test_refined_upscale_matches_the_plain_fast_guided_filter(samples: list[Sample]) -> None:
    # The compiled, soft-region-only path must equal the filter computed whole in numpy.
    from bgsvc.imaging import edges

    s = samples[1]
    p = s.matte.astype(np.float32) / 255
    small = shrink(s.image, (MODEL, MODEL))
    coef = plain_guided_coefficients(small.astype(np.float32) / 255, p, edges.GUIDED_EPS)
    up = [cv2.resize(c, SIZE, interpolation=cv2.INTER_LINEAR) for c in coef]
    img = s.image.astype(np.float32) / 255
    q = up[0] * img[..., 0] + up[1] * img[..., 1] + up[2] * img[..., 2] + up[3]
    expected = np.clip(q * 255, 0, 255).round().astype(np.uint8)
    diff = np.abs(upscale_matte(s.matte, s.image).astype(int) - expected)
    assert diff.max() <= 1


def _oracle_upscale(matte: np.ndarray, photo: np.ndarray) -> np.ndarray:
    from bgsvc.imaging import edges

    h, w = photo.shape[:2]
    small = shrink(photo, (matte.shape[1], matte.shape[0]))
    p = matte.astype(np.float32) / 255
    coef = plain_guided_coefficients(small.astype(np.float32) / 255, p, edges.GUIDED_EPS)
    up = [cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in coef]
    img = photo.astype(np.float32) / 255
    q = up[0] * img[..., 0] + up[1] * img[..., 1] + up[2] * img[..., 2] + up[3]
    return np.clip(q * 255, 0, 255).round().astype(np.uint8)


def test_a_product_photos_refined_matte_is_the_whole_filters_on_and_off_its_outline() -> None:
    # A product shot: an opaque body whose soft pixels are a band along its outline. The
    # filter runs only near that band; elsewhere in the body and the background the result
    # must still be the whole filter's, and on the band too.
    rng = np.random.default_rng(7)
    w, h, edge = 900, 600, 300
    photo = np.clip(rng.normal(120, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    body = ((xx - 430) / 300) ** 2 + ((yy - 310) / 220) ** 2 < 1
    photo[body] = np.clip(photo[body] * 0.3 + (200, 40, 30), 0, 255).astype(np.uint8)
    alpha = np.clip(255 * (1 - (((xx - 430) / 300) ** 2 + ((yy - 310) / 220) ** 2)) * 8, 0, 255)
    matte = cv2.resize(alpha.astype(np.uint8), (edge, edge * h // w), interpolation=cv2.INTER_AREA)
    soft = (matte > 3) & (matte < 252)
    assert 0.01 < soft.mean() < 0.1  # a band, not the body

    got = upscale_matte(matte, photo)
    diff = np.abs(got.astype(int) - _oracle_upscale(matte, photo))
    assert diff.max() <= 1
    assert np.abs(got.astype(int) - cv2.resize(matte, (w, h))).max() > 20  # it did refine


def hard_step_beside_strands() -> tuple[np.ndarray, np.ndarray]:
    """A photo dark on the left and bright on the right, and a matte that steps from 0 to
    255 two cells off the photo's edge with nothing soft between, beside soft strands."""
    rng = np.random.default_rng(0)
    w, h, edge = 1200, 900, 400
    photo = np.clip(rng.normal(60, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    photo[:, w // 2 :] = np.clip(rng.normal(200, 10, (h, w - w // 2, 3)), 0, 255)
    matte = np.zeros((edge * h // w, edge), np.uint8)
    matte[:, edge // 2 + 2 :] = 255
    matte[100:110, 50:100] = 128
    matte[100:110, 300:350] = 128
    return matte, photo


def test_a_hard_step_in_the_matte_is_fitted_to_the_photo_not_blurred() -> None:
    # No soft value marks the step, yet the filter must still move it onto the photo's edge.
    matte, photo = hard_step_beside_strands()
    got = upscale_matte(matte, photo)
    assert np.abs(got.astype(int) - _oracle_upscale(matte, photo)).max() <= 1
    row = got[600, 580:620].astype(int)
    assert row[:19].max() <= 10 and row[21:].min() >= 40  # the step sits at column 600


def test_decontamination_matches_the_plain_full_resolution_step(samples: list[Sample]) -> None:
    from bgsvc.imaging import edges

    s = samples[1]
    alpha = upscale_matte(s.matte, s.image)
    f_hat, b_hat = edges.foreground_ml(s.image, alpha, 256)
    f = cv2.resize(f_hat * 255, SIZE, interpolation=cv2.INTER_LINEAR)
    b = cv2.resize(b_hat * 255, SIZE, interpolation=cv2.INTER_LINEAR)
    a = alpha[..., None].astype(np.float32) / 255
    est = np.clip(f + a * (s.image - a * f - (1 - a) * b), 0, 255).round().astype(np.uint8)
    soft = (alpha >= edges.SOFT[0]) & (alpha <= edges.SOFT[1])
    expected = np.where(soft[..., None], est, s.image)
    got = edges.correct(s.image.copy(), s.image, alpha, f_hat, b_hat)
    assert soft.mean() > 0.01
    assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (40, 7), (256, 256), (300, 900)])
def test_any_matte_size_and_aspect_upscales_to_the_photo(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    matte = rng.integers(0, 256, shape, dtype=np.uint8)
    photo = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    for refine in (True, False):
        out = upscale_matte(matte, photo, refine=refine)
        assert out.shape == (120, 200) and out.dtype == np.uint8
    assert decontaminate(photo, upscale_matte(matte, photo)).shape == photo.shape


def test_tiny_photo_works() -> None:
    rng = np.random.default_rng(2)
    matte = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    for h, w in ((1, 1), (2, 5), (9, 3)):
        photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        alpha = upscale_matte(matte, photo)
        assert alpha.shape == (h, w)
        assert decontaminate(photo, alpha).shape == (h, w, 3)


@pytest.mark.parametrize("value", [0, 255])
def test_flat_mattes_stay_flat_and_leave_colours_alone(value: int) -> None:
    photo = np.random.default_rng(3).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    matte = np.full((32, 32), value, np.uint8)
    alpha = upscale_matte(matte, photo)
    assert (alpha == value).all()
    assert np.array_equal(decontaminate(photo, alpha), photo)


def test_clear_background_fills_a_hole_from_its_nearest_side() -> None:
    from bgsvc.imaging.edges import clear_background

    pixels = np.zeros((64, 128, 3), np.float32)
    pixels[:, :64] = (1, 0, 0)  # red on the left
    pixels[:, 64:] = (0, 0, 1)  # blue on the right
    clear = np.ones((64, 128), bool)
    clear[:, 40:88] = False  # a soft band across the middle
    prior = clear_background(pixels + 0.5 * (~clear)[..., None], clear)
    assert prior.shape == (32, 64, 3)
    # Clear pixels keep their colour; the band (columns 20-43 at half size) shades from
    # red on its left to blue on its right, and none of its own colour (+0.5 in every
    # channel, green included) leaks in.
    assert np.allclose(prior[:, :19], (1, 0, 0), atol=1e-5)
    assert prior[:, 20, 0].min() > 0.85 and prior[:, 43, 2].min() > 0.85
    assert prior[:, 32, 0].min() > 0.3 and prior[:, 32, 0].max() < 0.7
    assert prior[..., 1].max() < 1e-5


def test_colour_written_into_a_cutout_equals_the_copy() -> None:
    s = make_sample("green", (160, 120), model_edge=64)
    alpha = upscale_matte(s.matte, s.image)
    rgba = np.zeros((120, 160, 4), np.uint8)
    rgba[..., :3] = s.image
    out = decontaminate(s.image, alpha, out=rgba[..., :3])
    assert out is not None and np.shares_memory(out, rgba)
    np.testing.assert_array_equal(rgba[..., :3], decontaminate(s.image, alpha))
    assert (rgba[..., 3] == 0).all()


def test_a_matte_soft_everywhere_has_no_background_to_carry_and_still_works() -> None:
    photo = np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    alpha = np.full((60, 80), 128, np.uint8)
    colour = decontaminate(photo, alpha)
    assert colour.shape == photo.shape and not np.array_equal(colour, photo)


_FIRST_REQUEST = """
import json
import numpy as np
from bgsvc.imaging import area, edges, edge_kernels
from bgsvc.imaging.opencv import cv2

def compiled():
    return {
        f"{mod.__name__}.{name}": len(fn.signatures)
        for mod in (edge_kernels, area)
        for name, fn in vars(mod).items()
        if hasattr(fn, "signatures")
    }

edges.preload()
before = compiled()
rng = np.random.default_rng(0)
yy, xx = np.mgrid[:600, :900]
ring = 1 - ((xx - 430) / 300) ** 2 - ((yy - 310) / 220) ** 2
matte = cv2.resize(np.clip(255 * ring * 8, 0, 255).astype(np.uint8), (512, 512))
rgba = rng.integers(0, 256, (600, 900, 4), np.uint8)
rgba.flags.writeable = False  # as numpy's view of a decode
rgb = np.ascontiguousarray(rgba[..., :3])
frozen = rgb.copy()
frozen.flags.writeable = False
for photo in (rgb, frozen, rgba[..., :3]):
    alpha = edges.upscale_matte(matte, photo)
    edges.decontaminate(photo, alpha)
    edges.decontaminate(photo, alpha, out=np.zeros((600, 900, 4), np.uint8)[..., :3])
print(json.dumps({"before": before, "after": compiled()}))
"""


def test_preload_compiles_every_kernel_a_request_calls() -> None:
    # A kernel first compiled by a request stalls it for seconds: after preload, a request's
    # calls (a contiguous photo and the RGB of an RGBA decode, writable or read-only as a
    # decode's pixels are, both steps) compile nothing.
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _FIRST_REQUEST],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,  # a cold numba cache compiles every kernel: tens of seconds
    )
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["before"]["bgsvc.imaging.area._shrink"] >= 1
    assert seen["after"] == seen["before"]


def _window_sums_solved(
    guide: np.ndarray, p: np.ndarray, radius: int, eps: float, near: np.ndarray
) -> np.ndarray:
    """The fit as OpenCV's integer box sums of the thirteen planes and the 3x3 solve by
    cofactors in float32, step for step as edge_kernels.fit writes it (the oracle)."""
    k = 2 * radius + 1
    planes = [guide[..., i].astype(np.int32) for i in range(3)]
    q = p.astype(np.int32)
    r, g, b = planes
    quantities = [r, g, b, q, r * q, g * q, b * q, r * r, r * g, r * b, g * g, g * b, b * b]
    sums = [
        cv2.boxFilter(x, cv2.CV_32S, (k, k), normalize=False, borderType=cv2.BORDER_REFLECT)
        for x in quantities
    ]
    f = np.float32
    s1, s2, e = f(1 / (255 * k * k)), f(1 / (65025 * k * k)), f(eps)
    mr, mg, mb, mp = (x.astype(f) * s1 for x in sums[:4])
    cr, cg, cb = (sums[4 + i].astype(f) * s2 - m * mp for i, m in enumerate((mr, mg, mb)))
    rr = sums[7].astype(f) * s2 - mr * mr + e
    rg = sums[8].astype(f) * s2 - mr * mg
    rb = sums[9].astype(f) * s2 - mr * mb
    gg = sums[10].astype(f) * s2 - mg * mg + e
    gb = sums[11].astype(f) * s2 - mg * mb
    bb = sums[12].astype(f) * s2 - mb * mb + e
    i_rr, i_rg, i_rb = gg * bb - gb * gb, gb * rb - rg * bb, rg * gb - gg * rb
    i_gg, i_gb, i_bb = rr * bb - rb * rb, rb * rg - rr * gb, rr * gg - rg * rg
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = f(1) / (rr * i_rr + rg * i_rg + rb * i_rb)
    a_r = (i_rr * cr + i_rg * cg + i_rb * cb) * inv
    a_g = (i_rg * cr + i_gg * cg + i_gb * cb) * inv
    a_b = (i_rb * cr + i_gb * cg + i_bb * cb) * inv
    b0 = mp - a_r * mr - a_g * mg - a_b * mb
    flat = near == 0
    out = np.stack([a_r, a_g, a_b, b0])
    out[:3, flat] = 0
    out[3, flat] = mp[flat]
    return out


@pytest.mark.parametrize(
    ("shape", "radius"),
    [
        ((1, 1), 3),
        ((1, 9), 3),
        ((9, 1), 2),
        ((2, 2), 5),
        ((37, 53), 3),
        ((64, 40), 1),
        ((20, 30), 12),
    ],
)
def test_the_fits_running_sums_give_opencvs_box_sums_and_solve_bit_for_bit(
    shape: tuple[int, int], radius: int
) -> None:
    from bgsvc.imaging import edge_kernels

    rng = np.random.default_rng(sum(shape) + radius)
    guide = rng.integers(0, 256, (*shape, 4), np.uint8)[..., :3]  # an RGBA decode's RGB
    p = rng.integers(0, 256, shape, np.uint8)
    # Runs of flat and varying windows, starting and ending anywhere in a row.
    near = (rng.random(shape) < 0.6).astype(np.uint8)
    near[:, -1] = 1
    expected = _window_sums_solved(guide, p, radius, 1e-4, near)
    got = np.empty((4, *shape), np.float32)
    edge_kernels.fit(guide, p, radius, 1e-4, near, got, 0, shape[0])
    assert np.array_equal(got, expected, equal_nan=True)
    # A band of rows alone is the same rows of the whole.
    if shape[0] > 2:
        band = np.full_like(got, -1)
        edge_kernels.fit(guide, p, radius, 1e-4, near, band, 1, shape[0] - 1)
        assert np.array_equal(band[:, 1:-1], expected[:, 1:-1], equal_nan=True)
        assert (band[:, [0, -1]] == -1).all()


def test_an_empty_grid_fits_to_nothing_and_returns() -> None:
    import threading

    from bgsvc.imaging import edge_kernels

    def fit_empty() -> None:
        for shape in ((0, 5), (5, 0)):
            out = np.empty((4, *shape), np.float32)
            guide = np.zeros((*shape, 3), np.uint8)
            ones = np.ones(shape, np.uint8)
            edge_kernels.fit(guide, ones, 3, 1e-4, ones, out, 0, shape[0])

    # A line of no samples has nothing to reflect into: a loop there would never end.
    worker = threading.Thread(target=fit_empty, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
