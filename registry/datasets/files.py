"""User data from .npy, .npz and .csv files, with a clear error for ragged, non-numeric, empty or NaN input."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from registry.contract.dataset import DataError, Dataset
from registry.datasets.splits import SPLIT_SEED, split_indices
from registry.runtime.images import ImageShape, ShapeError, size, stack_shape


def read_array(path: str | Path) -> np.ndarray:
    """Read rows from .npy, .npz or .csv; refuse empty, ragged, non-numeric or NaN/Inf input."""
    return numeric_rows(_read_raw(Path(path)), str(path))


DATA_KEYS = ("x", "data", "arr_0")
LABEL_KEYS = ("y", "labels", "arr_0")


def _read_raw(path: Path, keys: tuple[str, ...] = DATA_KEYS) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            raw = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            raw = _read_npz(path, keys)
        elif suffix == ".csv":
            raw = _read_csv(path)
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r} (use .npy, .npz or .csv)")
    except DataError:
        raise
    except ValueError as exc:  # np.load on object arrays (ragged) or a corrupt file
        raise DataError(f"{path}: cannot read as a numeric array ({exc})") from exc
    return raw


def _read_npz(path: Path, keys: tuple[str, ...]) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        names = list(npz.keys())
        if not names:
            raise DataError(f"{path}: the .npz file holds no arrays")
        for key in keys:
            if key in names:
                return npz[key]
        if len(names) == 1:
            return npz[names[0]]
        raise DataError(f"{path}: several arrays ({', '.join(names)}); name the array {keys[0]!r}")


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
    labels: str | Path | None = None,
    validation_labels: str | Path | None = None,
) -> Dataset:
    """A user's rows, split into train/validation (or with a separate validation file).

    An array of shape (n, h, w) or (n, h, w, c) (c 1 or 3, channels last) is a stack of images;
    flat rows (a CSV) are images when ``image_shape`` is given, and must then be as wide as it.

    ``labels`` (one class 0..K-1 per row of ``path``) makes the data conditional; validation rows
    cut from ``path`` keep their labels, and a separate ``validation`` file needs its own
    ``validation_labels``.

    User data has no test split of ours: the user keeps test rows in their own file and
    scores them with ``genreg score``. Stored "test" metrics on user data are on validation.
    """
    path = Path(path)
    raw = _read_raw(path)
    x = numeric_rows(raw, str(path))
    shape = _image_shape(raw, image_shape, str(path))
    _check_label_flags(path, labels, validation, validation_labels)
    y = read_labels(labels, "--labels", len(x), path) if labels is not None else None
    if validation is not None:
        train, y_train = x, y
        val = _read_validation(Path(validation), x, shape)
        y_val = None
        if validation_labels is not None:
            y_val = read_labels(validation_labels, "--validation-labels", len(val), validation)
    else:
        if not 0 < validation_fraction < 1:
            raise DataError("validation fraction must be between 0 and 1")
        if len(x) < 10:
            raise DataError(f"{path}: {len(x)} rows are too few to split off validation data")
        # The labels are cut with the rows' own indices, so each keeps its row.
        train_idx, val_idx = split_indices(len(x), (1 - validation_fraction,), seed)
        train, val = x[train_idx], x[val_idx]
        y_train, y_val = (None, None) if y is None else (y[train_idx], y[val_idx])
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
        labels=None if y_train is None else {"train": y_train, "validation": y_val, "test": y_val},
    )


def _read_validation(validation: Path, x: np.ndarray, shape: ImageShape | None) -> np.ndarray:
    """A separate validation file's rows, refused unless they are the training data's kind."""
    raw_val = _read_raw(validation)
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
    return val


def _check_label_flags(
    path: Path,
    labels: str | Path | None,
    validation: str | Path | None,
    validation_labels: str | Path | None,
) -> None:
    """Labels come for every split or for none: a model conditioned in training is scored with
    the validation rows' classes, so a half-labelled pair of files is refused."""
    if validation_labels is not None and labels is None:
        raise DataError("--validation-labels needs --labels FILE (the training rows' classes) too")
    if validation_labels is not None and validation is None:
        raise DataError(
            f"--validation-labels goes with --validation FILE; without one, the validation rows are "
            f"cut from {path} and keep their --labels"
        )
    if labels is not None and validation is not None and validation_labels is None:
        raise DataError(f"--validation {validation} needs --validation-labels FILE when --labels is given")


def read_labels(path: str | Path, flag: str, rows: int, data: str | Path) -> np.ndarray:
    """One class (an integer 0..K-1) per row of ``data``, as int64, from a .npy, .npz (array
    'y' or 'labels') or .csv file; ``flag`` names the option in every refusal."""
    what = f"{path} ({flag})"
    arr = np.asarray(_read_raw(Path(path), LABEL_KEYS))
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(
            f"{what}: one integer label per row expected, got an array of shape {list(arr.shape)}"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{what}: labels must be integers (got dtype {arr.dtype})")
    if len(arr) != rows:
        raise DataError(f"{what}: {len(arr)} labels, but {data} has {rows} rows")
    # A CSV reads as floats, so integral floats (3.0) are classes; 2.5 or NaN are not.
    integral = np.isfinite(arr) & (arr == np.round(arr))
    if not integral.all():
        bad = int(np.argmin(integral))
        raise DataError(f"{what}: non-integer label {arr[bad]} at row {bad}")
    if (arr < 0).any():
        bad = int(np.argmax(arr < 0))
        raise DataError(f"{what}: negative label {int(arr[bad])} at row {bad}; classes are 0..K-1")
    return arr.astype(np.int64)


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
