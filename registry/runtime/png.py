"""PNG grids of image samples (Pillow only, so the service can draw them without torch)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from registry.runtime.images import image_shape


def png_grid(
    x: np.ndarray, shape: Sequence[int], high: float, scale: int = 4, pad: int = 1, cols: int | None = None
) -> bytes:
    """A grid of images (rows channels-last, ``shape`` (h, w) or (h, w, c)), ``cols`` wide
    (default: near-square): grayscale for one channel, RGB for three; each value v maps to
    255 * v / high."""
    from PIL import Image

    h, w, c = image_shape(shape) or (1, len(x[0]), 1)
    n = len(x)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 64, dtype=np.uint8)
    pixels = np.clip(np.asarray(x, dtype=np.float64) / max(high, 1e-12), 0, 1) * 255
    for i, img in enumerate(pixels.reshape(n, h, w, c)):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top : top + h, left : left + w] = img.astype(np.uint8)
    image = Image.fromarray(canvas[:, :, 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    image = image.resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
