"""Built-in data sets: scikit-learn's digits, sample-image patches, shapes and 2-D toys with exact densities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from registry.contract.dataset import DataError, Dataset
from registry.datasets.files import load_user_data
from registry.datasets.splits import SPLIT_SEED, split_indices
from registry.datasets.toys import TOYS
from registry.runtime.images import ImageShape

DIGITS_LEVELS = 17
TOY_SIZES = {"train": 20_000, "validation": 5_000, "test": 20_000}


SPLITS = ("train", "validation", "test")
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _split(n: int) -> dict[str, np.ndarray]:
    """A built-in set's 70/15/15 split of row indices, fixed by SPLIT_SEED."""
    return dict(zip(SPLITS, split_indices(n, (0.70, 0.15), SPLIT_SEED), strict=True))


def load_digits(conditional: bool = False) -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, levels 0..16): 70/15/15 split, fixed seed.

    ``conditional``: each row's label is its digit (scikit-learn's target), classes "0".."9".
    The rows are the same either way.
    """
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    x = digits.data.astype(np.float32)
    parts = _split(len(x))
    labels = {s: digits.target[i].astype(np.int64) for s, i in parts.items()} if conditional else None
    return Dataset(
        "digits",
        x[parts["train"]],
        x[parts["validation"]],
        x[parts["test"]],
        levels=DIGITS_LEVELS,
        image_shape=(8, 8, 1),
        source="sklearn.datasets.load_digits",
        labels=labels,
        class_names=DIGIT_CLASSES if conditional else (),
    )


def load_shapes(conditional: bool = False) -> Dataset:
    """16x16 binary shapes with known factors (see registry.datasets.shapes): 70/15/15 split.

    ``conditional``: each row's label is its shape (the first factor: square, cross, diamond),
    so a conditional model draws a chosen shape at any scale and position.
    """
    from registry.datasets.shapes import FACTOR_NAMES, SHAPES, SIZE, generate

    images, factors = generate()
    parts = _split(len(images))
    labels = {s: factors[i, 0].astype(np.int64) for s, i in parts.items()} if conditional else None
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
        labels=labels,
        class_names=SHAPES if conditional else (),
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
# The built-in sets that carry a class per row, for --conditional.
LABELLED_DATASETS: tuple[str, ...] = ("digits", "shapes")


def load_dataset(
    spec: str,
    *,
    levels: int | None = None,
    validation: str | Path | None = None,
    validation_fraction: float = 0.1,
    seed: int = SPLIT_SEED,
    image_shape: ImageShape | None = None,
    conditional: bool = False,
    labels: str | Path | None = None,
    validation_labels: str | Path | None = None,
) -> Dataset:
    """A built-in dataset by name, or a user file (.npy, .npz, .csv) by path (``image_shape``:
    what its flat rows are, (height, width, channels)).

    ``conditional``: with labels, one class per row: a built-in's own (digits, shapes), or for a
    user file those of ``labels`` (and ``validation_labels`` for a separate validation file);
    a user file with ``labels`` is conditional whether or not ``conditional`` is set.
    """
    if spec in BUILTIN_DATASETS:
        _check_builtin_options(spec, image_shape, conditional, labels, validation_labels)
        return _load_builtin(spec, conditional)
    path = Path(spec)
    if path.suffix.lower() not in (".npy", ".npz", ".csv"):
        raise DataError(
            f"unknown dataset {spec!r}: use one of {', '.join(BUILTIN_DATASETS)} or a .npy, .npz or .csv file"
        )
    if conditional and labels is None:
        raise DataError(f"--conditional on a user file needs --labels FILE (one class per row of {spec})")
    return load_user_data(
        path,
        levels=levels,
        validation=validation,
        validation_fraction=validation_fraction,
        seed=seed,
        image_shape=image_shape,
        labels=labels,
        validation_labels=validation_labels,
    )


def _check_builtin_options(
    spec: str,
    image_shape: ImageShape | None,
    conditional: bool,
    labels: str | Path | None,
    validation_labels: str | Path | None,
) -> None:
    """Refuse, by name, the options that only make sense for a user file or a labelled set."""
    if image_shape is not None:
        raise DataError(f"--image-shape applies to user files; {spec!r} states its own shape")
    if labels is not None or validation_labels is not None:
        raise DataError("--labels applies to user files; use --conditional for digits' or shapes' own labels")
    if conditional and spec not in LABELLED_DATASETS:
        raise DataError(
            f"{spec!r} has no labels; --conditional applies to {', '.join(LABELLED_DATASETS)} "
            "(or a user file with --labels FILE)"
        )


def _load_builtin(spec: str, conditional: bool) -> Dataset:
    if spec == "digits":
        return load_digits(conditional)
    if spec == "shapes":
        return load_shapes(conditional)
    if spec == "patches":
        return load_patches()
    if spec == "patches-rgb":
        return load_patches_rgb()
    return load_toy(spec)
