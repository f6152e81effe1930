"""User data from .npy, .npz and .csv files, with a clear error for ragged, non-numeric, empty or NaN input."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from registry.contract.dataset import DataError, Dataset
from registry.datasets.splits import SPLIT_SEED, split_rows
from registry.runtime.images import ImageShape, ShapeError, size, stack_shape


def read_array(path: str | Path) -> np.ndarray:
    """Read rows from .npy, .npz or .csv; refuse empty, ragged, non-numeric or NaN/Inf input."""
    return numeric_rows(_read_raw(Path(path)), str(path))


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


def numeric_rows(raw: Any, what: str) -> np.ndarray:
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
    image_shape: ImageShape | None = None,
) -> Dataset:
    """A user's rows, split into train/validation (or with a separate validation file).

    An array of shape (n, h, w) or (n, h, w, c) (c 1 or 3, channels last) is a stack of images;
    flat rows (a CSV) are images when ``image_shape`` is given, and must then be as wide as it.

    User data has no test split of ours: the user keeps test rows in their own file and
    scores them with ``genreg score``. Stored "test" metrics on user data are on validation.
    """
    path = Path(path)
    raw = _read_raw(path)
    x = numeric_rows(raw, str(path))
    shape = _image_shape(raw, image_shape, str(path))
    if validation is not None:
        raw_val = _read_raw(Path(validation))
        val = numeric_rows(raw_val, str(validation))
        if val.shape[1] != x.shape[1]:
            raise DataError(f"{validation}: {val.shape[1]} columns, but the training data has {x.shape[1]}")
        # flat validation rows are read as the training data's images
        val_shape = _image_shape(raw_val, None, str(validation)) or shape
        if val_shape != shape:
            raise DataError(
                f"{validation}: images of shape {_shape_text(val_shape)}, but the training data's are "
                f"{_shape_text(shape)}"
            )
        train = x
    else:
        if not 0 < validation_fraction < 1:
            raise DataError("validation fraction must be between 0 and 1")
        if len(x) < 10:
            raise DataError(f"{path}: {len(x)} rows are too few to split off validation data")
        train, val = split_rows(x, (1 - validation_fraction,), seed)
    levels, note = infer_levels(np.concatenate([train, val]), levels, str(path))
    return Dataset(
        path.stem,
        train,
        val,
        val,
        levels=levels,
        image_shape=shape if levels else None,
        source=f"file: {path.name}",
        notes=[note] if note else [],
    )


def _image_shape(raw: np.ndarray, given: ImageShape | None, what: str) -> ImageShape | None:
    """The images' (h, w, c) from the array's own shape, or ``given`` for flat rows; a
    contradiction between the two, or a given shape the rows do not fill, is refused by name."""
    try:
        found = stack_shape(np.shape(raw))
    except ShapeError as exc:
        raise DataError(f"{what}: {exc}") from None
    if found is not None and given is not None and found != given:
        raise DataError(
            f"{what}: the array holds images of shape {_shape_text(found)}, but --image-shape says "
            f"{_shape_text(given)}"
        )
    shape = found or given
    width = int(np.prod(np.shape(raw)[1:])) if np.ndim(raw) > 1 else 1
    if shape is not None and size(shape) != width:
        raise DataError(
            f"{what}: --image-shape {_shape_text(shape)} holds {size(shape)} values a row, but the rows "
            f"have {width}"
        )
    return shape


def _shape_text(shape: ImageShape | None) -> str:
    return ",".join(map(str, shape)) if shape else "none (flat rows)"
