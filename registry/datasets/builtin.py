"""Built-in data sets: scikit-learn's digits, sample-image patches, shapes and 2-D toys with exact densities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from registry.contract.dataset import DataError, Dataset
from registry.datasets.files import load_user_data
from registry.datasets.splits import SPLIT_SEED, split_rows
from registry.datasets.toys import TOYS
from registry.runtime.images import ImageShape

DIGITS_LEVELS = 17
TOY_SIZES = {"train": 20_000, "validation": 5_000, "test": 20_000}


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, levels 0..16): 70/15/15 split, fixed seed."""
    from sklearn.datasets import load_digits as sk_digits

    x = sk_digits().data.astype(np.float32)
    train, validation, test = split_rows(x, (0.70, 0.15), SPLIT_SEED)
    return Dataset(
        "digits",
        train,
        validation,
        test,
        levels=DIGITS_LEVELS,
        image_shape=(8, 8, 1),
        source="sklearn.datasets.load_digits",
    )


def load_shapes() -> Dataset:
    """16x16 binary shapes with known factors (see registry.datasets.shapes): 70/15/15 split."""
    from registry.datasets.shapes import FACTOR_NAMES, SIZE, generate

    images, factors = generate()
    idx = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    cuts = np.cumsum([round(0.70 * len(images)), round(0.15 * len(images))])
    parts = dict(zip(("train", "validation", "test"), np.split(idx, cuts), strict=True))
    return Dataset(
        "shapes",
        images[parts["train"]],
        images[parts["validation"]],
        images[parts["test"]],
        levels=2,
        image_shape=(SIZE, SIZE, 1),
        source="generated: shape x scale x position grid",
        factors={split: factors[i] for split, i in parts.items()},
        factor_names=FACTOR_NAMES,
    )


PATCH_SIZE = 8
PATCH_LEVELS = 256
# Column bands of each sample image: train | validation | test. Patches never straddle a band,
# so no pixel of the test split is ever seen in training.
PATCH_BANDS = (0.70, 0.85)


def _bands(image: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(split, the image's column band for it): train, validation, test, by PATCH_BANDS."""
    width = image.shape[1]
    edges = [0, *(int(f * width) for f in PATCH_BANDS), width]
    for split, lo, hi in zip(("train", "validation", "test"), edges[:-1], edges[1:], strict=True):
        yield split, image[:, lo:hi]


def load_patches() -> Dataset:
    """8x8 grayscale patches (256 levels) cut from scikit-learn's two bundled sample images.

    Each image is split into column bands (70/15/15 of its width) and non-overlapping
    patches are cut from each band, so train, validation and test come from disjoint regions.
    """
    from sklearn.datasets import load_sample_images

    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for image in load_sample_images().images:
        # ITU-R BT.601 luma, rounded back to the 8-bit lattice.
        gray = np.rint(image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
        gray = np.clip(gray, 0, PATCH_LEVELS - 1)
        for split, band in _bands(gray):
            rows, cols = band.shape[0] // PATCH_SIZE, band.shape[1] // PATCH_SIZE
            tiles = band[: rows * PATCH_SIZE, : cols * PATCH_SIZE].reshape(rows, PATCH_SIZE, cols, PATCH_SIZE)
            parts[split].append(tiles.transpose(0, 2, 1, 3).reshape(-1, PATCH_SIZE * PATCH_SIZE))
    train, validation, test = (np.concatenate(parts[s]).astype(np.float32) for s in parts)
    return Dataset(
        "patches",
        train,
        validation,
        test,
        levels=PATCH_LEVELS,
        image_shape=(PATCH_SIZE, PATCH_SIZE, 1),
        source="sklearn.datasets.load_sample_images: 8x8 grayscale patches, disjoint column bands",
    )


RGB_PATCH_SIZE = 32
# Train patches overlap (a stride of 4 pixels: about 10,400 from each photograph); validation and
# test patches, from their own bands, at a stride of 8 (450 each).
RGB_STRIDES = {"train": 4, "validation": 8, "test": 8}


def load_patches_rgb() -> Dataset:
    """32x32 colour patches (3 channels, 256 levels, rows channels-last) cut from scikit-learn's
    two bundled sample photographs, from the same disjoint column bands as ``patches``: no pixel
    of the validation or test split is in a training patch."""
    from numpy.lib.stride_tricks import sliding_window_view
    from sklearn.datasets import load_sample_images

    size = RGB_PATCH_SIZE
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for image in load_sample_images().images:
        for split, band in _bands(image):
            stride = RGB_STRIDES[split]
            windows = sliding_window_view(band, (size, size), axis=(0, 1))
            # (rows, cols, channels, size, size) -> patches of (size, size, channels)
            picked = windows[::stride, ::stride].transpose(0, 1, 3, 4, 2)
            parts[split].append(picked.reshape(-1, size * size * 3))
    train, validation, test = (np.concatenate(parts[s]).astype(np.float32) for s in parts)
    return Dataset(
        "patches-rgb",
        train,
        validation,
        test,
        levels=PATCH_LEVELS,
        image_shape=(size, size, 3),
        source=(
            "sklearn.datasets.load_sample_images: 32x32 RGB patches, disjoint column bands "
            "(train stride 4, validation and test stride 8)"
        ),
    )


def load_toy(name: str) -> Dataset:
    toy = TOYS[name]
    # One generator per split keeps each split fixed whatever the size of the others.
    splits = {
        split: toy.sample(n, np.random.default_rng([SPLIT_SEED, i])).astype(np.float32)
        for i, (split, n) in enumerate(TOY_SIZES.items())
    }
    return Dataset(
        name,
        splits["train"],
        splits["validation"],
        splits["test"],
        log_density=toy.log_density,
        source=f"toy: {toy.description}",
    )


BUILTIN_DATASETS: tuple[str, ...] = ("digits", "shapes", "patches", "patches-rgb", *TOYS)


def load_dataset(
    spec: str,
    *,
    levels: int | None = None,
    validation: str | Path | None = None,
    validation_fraction: float = 0.1,
    seed: int = SPLIT_SEED,
    image_shape: ImageShape | None = None,
) -> Dataset:
    """A built-in dataset by name, or a user file (.npy, .npz, .csv) by path (``image_shape``:
    what its flat rows are, (height, width, channels))."""
    if image_shape is not None and spec in BUILTIN_DATASETS:
        raise DataError(f"--image-shape applies to user files; {spec!r} states its own shape")
    if spec == "digits":
        return load_digits()
    if spec == "shapes":
        return load_shapes()
    if spec == "patches":
        return load_patches()
    if spec == "patches-rgb":
        return load_patches_rgb()
    if spec in TOYS:
        return load_toy(spec)
    path = Path(spec)
    if path.suffix.lower() not in (".npy", ".npz", ".csv"):
        raise DataError(
            f"unknown dataset {spec!r}: use one of {', '.join(BUILTIN_DATASETS)} or a .npy, .npz or .csv file"
        )
    return load_user_data(
        path,
        levels=levels,
        validation=validation,
        validation_fraction=validation_fraction,
        seed=seed,
        image_shape=image_shape,
    )
