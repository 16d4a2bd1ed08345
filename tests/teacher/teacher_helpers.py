"""Synthetic images and metrics for the teacher tests."""
from __future__ import annotations

import numpy as np


def synthetic_case(seed: int, n_objects: int = 2, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A noisy ``(size, size)`` float32 image with bright ellipses and its label map (1 inside)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0.0, 0.3, (size, size))
    label = np.zeros((size, size), np.int64)
    for _ in range(n_objects):
        r = rng.uniform(6, 12)
        cy, cx = rng.uniform(r + 2, size - r - 2, 2)
        inside = (yy - cy) ** 2 / (r * rng.uniform(0.6, 1.4)) ** 2 + (xx - cx) ** 2 / r**2 < 1
        image[inside] += rng.uniform(1.5, 3.0)
        label[inside] = 1
    return image.astype(np.float32), label


def bright_disk(height: int = 180, width: int = 240) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CT-like image with one bright disk: ``(image (H, W), mask (H, W) bool, box_xyxy (4,))``."""
    yy, xx = np.mgrid[:height, :width]
    mask = (yy - 90) ** 2 + (xx - 100) ** 2 < 40**2
    image = np.where(mask, 200.0, 20.0) + np.random.default_rng(0).normal(0, 5, (height, width))
    return image.astype(np.float32), mask, np.array([60.0, 50.0, 140.0, 130.0])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
