"""OpenCV, with its own thread pool limited to the calling thread.

The resizes and the cutout run in the stage threads beside the forward pass, which
admission control budgets; OpenCV's pool would otherwise spread each call over every core
(measured: a 2 MP resize takes 0.7 ms on one thread, no faster on two).
"""

from __future__ import annotations

import cv2

cv2.setNumThreads(1)

__all__ = ["cv2"]
