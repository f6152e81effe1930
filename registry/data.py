"""Datasets: scikit-learn's digits, 2-D toys with exact densities, and user files."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from registry.toys import TOYS

DIGITS_LEVELS = 17
SPLIT_SEED = 0
TOY_SIZES = {"train": 20_000, "validation": 5_000, "test": 20_000}


class DataError(ValueError):
    """User data or a dataset name that cannot be used; the message says why."""


@dataclass
class Dataset:
    """Train/validation/test rows (float32, one row per example) and what they are."""

    name: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    levels: int | None = None  # discrete data takes the integer values 0..levels-1
    image_shape: tuple[int, int] | None = None
    log_density: Callable[[np.ndarray], np.ndarray] | None = None  # exact, for toys
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # Known generative factors per split (integer indices), for disentanglement metrics.
    factors: dict[str, np.ndarray] | None = None
    factor_names: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def discrete(self) -> bool:
        return self.levels is not None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.train)

    def describe(self) -> dict[str, Any]:
        """What the store records about the data a model was trained on."""
        return {
            "name": self.name,
            "dim": self.dim,
            "levels": self.levels,
            "low": 0.0 if self.levels else None,
            "high": float(self.levels - 1) if self.levels else None,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "n_train": len(self.train),
            "n_validation": len(self.validation),
            "n_test": len(self.test),
            "fingerprint": self.fingerprint,
            "source": self.source,
        }


def fingerprint(x: np.ndarray) -> str:
    """sha256 over the shape, dtype and bytes of an array."""
    arr = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _split(x: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    idx = np.random.default_rng(seed).permutation(len(x))
    cuts = np.cumsum([round(f * len(x)) for f in fractions])
    return [x[i] for i in np.split(idx, cuts)]


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, levels 0..16): 70/15/15 split, fixed seed."""
    from sklearn.datasets import load_digits as sk_digits

    x = sk_digits().data.astype(np.float32)
    train, validation, test = _split(x, (0.70, 0.15), SPLIT_SEED)
    return Dataset(
        "digits",
        train,
        validation,
        test,
        levels=DIGITS_LEVELS,
        image_shape=(8, 8),
        source="sklearn.datasets.load_digits",
    )


def load_shapes() -> Dataset:
    """16x16 binary shapes with known factors (see registry.shapes): 70/15/15 split."""
    from registry.shapes import FACTOR_NAMES, SIZE, generate

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
        image_shape=(SIZE, SIZE),
        source="generated: shape x scale x position grid",
        factors={split: factors[i] for split, i in parts.items()},
        factor_names=FACTOR_NAMES,
    )


PATCH_SIZE = 8
PATCH_LEVELS = 256
# Column bands of each sample image: train | validation | test. Patches never straddle a band,
# so no pixel of the test split is ever seen in training.
PATCH_BANDS = (0.70, 0.85)


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
        width = gray.shape[1]
        edges = [0, *(int(f * width) for f in PATCH_BANDS), width]
        for split, lo, hi in zip(parts, edges[:-1], edges[1:], strict=True):
            band = gray[:, lo:hi]
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
        image_shape=(PATCH_SIZE, PATCH_SIZE),
        source="sklearn.datasets.load_sample_images: 8x8 grayscale patches, disjoint column bands",
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


BUILTIN_DATASETS: tuple[str, ...] = ("digits", "shapes", "patches", *TOYS)


def load_dataset(
    spec: str,
    *,
    levels: int | None = None,
    validation: str | Path | None = None,
    validation_fraction: float = 0.1,
    seed: int = SPLIT_SEED,
) -> Dataset:
    """A built-in dataset by name, or a user file (.npy, .npz, .csv) by path."""
    if spec == "digits":
        return load_digits()
    if spec == "shapes":
        return load_shapes()
    if spec == "patches":
        return load_patches()
    if spec in TOYS:
        return load_toy(spec)
    path = Path(spec)
    if path.suffix.lower() not in (".npy", ".npz", ".csv"):
        raise DataError(
            f"unknown dataset {spec!r}: use one of {', '.join(BUILTIN_DATASETS)} or a .npy, .npz or .csv file"
        )
    return load_user_data(
        path, levels=levels, validation=validation, validation_fraction=validation_fraction, seed=seed
    )


def read_array(path: str | Path) -> np.ndarray:
    """Read rows from .npy, .npz or .csv; refuse empty, ragged, non-numeric or NaN/Inf input."""
    return check_rows(_read_raw(Path(path)), str(path))


def _read_raw(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            raw = _read_npz(path)
        elif suffix == ".csv":
            raw = _read_csv(path)
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r} (use .npy, .npz or .csv)")
    except DataError:
        raise
    except ValueError as exc:  # np.load on object arrays (ragged) or a corrupt file
        raise DataError(f"{path}: cannot read as a numeric array ({exc})") from exc
    return raw


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.keys())
        if not keys:
            raise DataError(f"{path}: the .npz file holds no arrays")
        for key in ("x", "data", "arr_0"):
            if key in keys:
                return npz[key]
        if len(keys) == 1:
            return npz[keys[0]]
        raise DataError(f"{path}: several arrays ({', '.join(keys)}); name the data array 'x'")


def _read_csv(path: Path) -> np.ndarray:
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the file holds no rows")

    def numeric(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    start = 0 if all(numeric(c) for c in rows[0]) else 1  # a header line of names
    width = len(rows[0])
    values: list[list[float]] = []
    for line_no, row in enumerate(rows[start:], start=start + 1):
        if len(row) != width:
            raise DataError(f"{path}: line {line_no} has {len(row)} columns, expected {width} (ragged)")
        try:
            values.append([float(c) for c in row])
        except ValueError:
            bad = next(c for c in row if not numeric(c))
            raise DataError(f"{path}: line {line_no}: non-numeric value {bad!r}") from None
    return np.asarray(values)


def check_rows(raw: Any, what: str) -> np.ndarray:
    """Validate a 2-D (or image stack) numeric array and return it as float32 rows."""
    arr = np.asarray(raw)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{what}: values must be numbers (got dtype {arr.dtype}; ragged rows?)")
    if arr.size == 0:
        raise DataError(f"{what}: no data (shape {arr.shape})")
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise DataError(f"{what}: NaN or infinite value at row {bad[0]}, column {bad[1]}")
    return arr.astype(np.float32)


def infer_levels(x: np.ndarray, levels: int | None, what: str) -> tuple[int | None, str | None]:
    """Check or infer how many discrete levels 0..L-1 the data has; return (levels, note)."""
    integral = bool(np.all(x == np.round(x)))
    if levels is not None:
        if levels < 2:
            raise DataError(f"--levels must be at least 2 (got {levels})")
        if not integral or x.min() < 0 or x.max() > levels - 1:
            raise DataError(
                f"{what}: --levels {levels} needs integer values in 0..{levels - 1} "
                f"(found range {x.min():g}..{x.max():g}{'' if integral else ', non-integers'})"
            )
        return levels, None
    if integral and x.min() >= 0:
        inferred = int(x.max()) + 1
        if 2 <= inferred <= 65536:
            return inferred, (
                f"note: {what} is integer-valued in 0..{inferred - 1}; treating it as discrete "
                f"with --levels {inferred} (pass --levels to change)"
            )
    return None, None


def load_user_data(
    path: str | Path,
    *,
    levels: int | None = None,
    validation: str | Path | None = None,
    validation_fraction: float = 0.1,
    seed: int = SPLIT_SEED,
) -> Dataset:
    """A user's rows, split into train/validation (or with a separate validation file).

    User data has no test split of ours: the user keeps test rows in their own file and
    scores them with ``genreg score``. Stored "test" metrics on user data are on validation.
    """
    path = Path(path)
    raw = _read_raw(path)
    x = check_rows(raw, str(path))
    # An (n, h, w) array is a stack of images: keep the shape for PNG grids.
    image_shape = (int(raw.shape[1]), int(raw.shape[2])) if np.ndim(raw) == 3 else None
    if validation is not None:
        val = read_array(validation)
        if val.shape[1] != x.shape[1]:
            raise DataError(f"{validation}: {val.shape[1]} columns, but the training data has {x.shape[1]}")
        train = x
    else:
        if not 0 < validation_fraction < 1:
            raise DataError("validation fraction must be between 0 and 1")
        if len(x) < 10:
            raise DataError(f"{path}: {len(x)} rows are too few to split off validation data")
        train, val = _split(x, (1 - validation_fraction,), seed)
    levels, note = infer_levels(np.concatenate([train, val]), levels, str(path))
    return Dataset(
        path.stem,
        train,
        val,
        val,
        levels=levels,
        image_shape=image_shape if levels else None,
        source=f"file: {path.name}",
        notes=[note] if note else [],
    )
