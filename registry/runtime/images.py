"""The shape of image rows: (height, width, channels), channels-last, each image one flat row.

A pixel's channels sit next to each other in a row (R, G, B, then the next pixel), as PIL and
numpy lay images out, so a row reshaped to (height, width, channels) is the image. Channels are
1 (grayscale) or 3 (RGB). Models stored before channels were described record (height, width):
read here as one channel.
"""

from __future__ import annotations

from collections.abc import Sequence

ImageShape = tuple[int, int, int]
CHANNELS = (1, 3)


class ShapeError(ValueError):
    """An image shape that cannot be used; the message names the shape."""


def image_shape(value: Sequence[int] | None) -> ImageShape | None:
    """A stored or given image shape as (height, width, channels); None for data that is not
    images. (height, width) is one channel."""
    if not value:
        return None
    dims = tuple(int(v) for v in value)
    if len(dims) == 2:
        dims = (*dims, 1)
    if len(dims) != 3 or min(dims) < 1 or dims[2] not in CHANNELS:
        raise ShapeError(
            f"image shape {list(value)}: expected (height, width, channels) with channels 1 or 3"
        )
    return dims  # type: ignore[return-value]


def parse_image_shape(text: str) -> ImageShape:
    """``H,W,C`` (or ``H,W`` for one channel; ``x`` also separates) as an image shape."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ShapeError(f"image shape {text!r}: expected H,W,C (e.g. 32,32,3)") from None
    shape = image_shape(dims) if len(dims) in (2, 3) else None
    if shape is None:
        raise ShapeError(f"image shape {text!r}: expected H,W,C (e.g. 32,32,3)")
    return shape


def stack_shape(shape: Sequence[int]) -> ImageShape | None:
    """The image shape of an array of that ``shape`` (n first): (n, h, w) is a grayscale stack,
    (n, h, w, c) one of c channels (1 or 3); None for rows (n, d). Anything else is refused."""
    if len(shape) <= 2:
        return None
    if len(shape) == 3:
        return (int(shape[1]), int(shape[2]), 1)
    if len(shape) == 4 and shape[3] in CHANNELS:
        return (int(shape[1]), int(shape[2]), int(shape[3]))
    raise ShapeError(
        f"array shape {list(shape)}: an image stack is (n, height, width) or (n, height, width, "
        "channels) with channels 1 or 3 (channels last)"
    )


def size(shape: ImageShape) -> int:
    """Values in one image (its row's width)."""
    return shape[0] * shape[1] * shape[2]


def describe(shape: ImageShape) -> str:
    h, w, c = shape
    return f"{h}x{w}" + ("" if c == 1 else f"x{c}")
