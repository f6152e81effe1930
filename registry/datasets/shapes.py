"""`shapes`: 16x16 binary images with known generative factors, generated in code.

Every combination of shape (square, cross, diamond), scale (4 sizes) and x and y position
(9 each) appears once: 972 images, in the spirit of dSprites. The factors let a
disentanglement metric (MIG) compare what an encoder learned with what made the data.
"""

from __future__ import annotations

import itertools

import numpy as np

SIZE = 16
SHAPES = ("square", "cross", "diamond")
SCALES = (2, 3, 4, 5)  # half-widths in pixels
POSITIONS = tuple(range(3, 12))  # 9 centre coordinates, shapes stay inside the canvas
FACTOR_NAMES = ("shape", "scale", "x", "y")


def draw(shape: str, half: int, cx: int, cy: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dx, dy = np.abs(xx - cx), np.abs(yy - cy)
    if shape == "square":
        mask = (dx <= half) & (dy <= half)
    elif shape == "cross":
        mask = ((dx <= half) & (dy <= half // 2)) | ((dy <= half) & (dx <= half // 2))
    else:
        mask = dx + dy <= half
    return mask.astype(np.float32)


def generate() -> tuple[np.ndarray, np.ndarray]:
    """(images (972, 256) in {0, 1}, factor indices (972, 4))."""
    images, factors = [], []
    for (si, shape), (ki, half), (xi, cx), (yi, cy) in itertools.product(
        enumerate(SHAPES), enumerate(SCALES), enumerate(POSITIONS), enumerate(POSITIONS)
    ):
        images.append(draw(shape, half, cx, cy).ravel())
        factors.append((si, ki, xi, yi))
    return np.stack(images), np.asarray(factors, dtype=np.int64)
