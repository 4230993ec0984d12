"""The two resizes around the model: the photo down to the model's square input, and the
matte back up to the photo's size, both bilinear in OpenCV (its SIMD kernels: 0.7 ms and
1.0 ms for a 2 MP photo, where Pillow's took 9.6 ms and 5.0 ms; benchmarks/RESULTS.md)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bgsvc.imaging import area
from bgsvc.imaging.opencv import cv2


def model_input(rgb: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """``rgb`` (an RGB image or its HxWx3 uint8 pixels) at ``size`` x ``size``: a plain
    bilinear resize, no antialiasing, which is how the models were trained (torch's
    ``interpolate``) and how their authors run them. An antialiased input moved
    scikit-image's rocket's matte by IoU 0.985 at 2 MP (benchmarks/RESULTS.md): the model
    is fed what it learned on."""
    pixels = np.asarray(rgb, dtype=np.uint8)
    if pixels.shape[:2] == (size, size):
        return pixels
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LINEAR)


def shrink(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` (HxW or HxWxC uint8) area-averaged down to ``size`` (width, height). OpenCV's
    area average is fast for whole factors only (9.5 ms from 12 MP to 4 MP, against 45 ms
    straight to a fractional size): the whole part of each axis's factor is averaged
    first, then a small bilinear step makes the exact size. Less than twice smaller, the
    compiled average of bgsvc.imaging.area does it in one."""
    h, w = img.shape[:2]
    if (w, h) == size:
        return img
    fx, fy = max(1, w // size[0]), max(1, h // size[1])
    if fx == 1 and fy == 1:
        if area.applies(img, size):
            return area.shrink(img, size)
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    img = cv2.resize(img, None, fx=1 / fx, fy=1 / fy, interpolation=cv2.INTER_AREA)
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def matte_to(matte: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 matte (HxW) resized bilinearly to ``size`` (width, height)."""
    w, h = size
    mh, mw = matte.shape
    if (w, h) == (mw, mh):
        return matte
    if w < mw or h < mh:
        # A photo smaller than the model's input: Pillow's antialiased bilinear, as the
        # wrapped graph does (a plain or area-averaged shrink moved thin edges: IoU 0.978
        # on scikit-image's rocket). Small, so cheap either way.
        shrunk = Image.fromarray(matte, "L").resize(size, Image.Resampling.BILINEAR)
        return np.asarray(shrunk, dtype=np.uint8)
    return cv2.resize(matte, size, interpolation=cv2.INTER_LINEAR)
