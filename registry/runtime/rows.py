"""The one place that checks rows sent to a model: their structure as JSON, then their values
against the model's data (width, finiteness, float32 range, range and lattice of the levels).

``parse_rows`` turns a parsed JSON value into an array at C speed: a batch of 1,024 digits is
65,536 numbers, and a Python-level walk over them cost more than the model, so the exact walk
runs only when numpy's inference fails or booleans may be present. ``check_rows`` then holds
the array against the model; the service, the CLI and the evaluation all call it.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np


class InputError(ValueError):
    """Rows (or a request field about them) that a model cannot take.

    ``field`` names the offending request field; the message names it too.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _bad(what: str, problem: str) -> InputError:
    return InputError(what, f"{what}: {problem}")


def _row_problem(value: list[Any]) -> str | None:
    """Why ``value`` is not a rectangular list of rows of numbers (the slow, exact walk)."""
    for i, row in enumerate(value):
        if not isinstance(row, list):
            return f"row {i} is not a list of numbers"
        if len(row) != len(value[0]):
            return f"row {i} has {len(row)} values, row 0 has {len(value[0])}"
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float):
                return f"value at row {i}, column {j} is not a number"
    return None


def _has_bool(value: list[Any]) -> bool:
    return any(type(v) is bool for v in itertools.chain.from_iterable(value))


def parse_rows(value: Any, min_rows: int, max_rows: int, *, may_hold_bools: bool = True) -> np.ndarray:
    """A JSON list of rows of numbers as a float64 array; ValueError says what is wrong.

    numpy would quietly read ``[true, 0.5]`` as ``[1.0, 0.5]``; ``may_hold_bools`` = False (the
    raw body holds no ``true``/``false``) skips the walk that looks for them.
    """
    if not isinstance(value, list):
        raise ValueError("must be a list of rows (lists of numbers)")
    if not min_rows <= len(value) <= max_rows:
        raise ValueError(f"must have {min_rows} to {max_rows} rows, got {len(value)}")
    try:
        arr = np.asarray(value)
        fast = arr.ndim == 2 and arr.dtype.kind in "fi"
    except (ValueError, TypeError, OverflowError):
        fast = False
    if fast and not (may_hold_bools and _has_bool(value)):
        return arr.astype(np.float64, copy=False)
    problem = _row_problem(value)
    if problem:
        raise ValueError(problem)
    try:  # only numbers, but some beyond int64 (numpy made them objects)
        return np.array(value, dtype=np.float64)
    except OverflowError:
        raise ValueError("a value is too large for a 64-bit float") from None


def check_rows(x: Any, data: dict[str, Any], what: str = "x") -> np.ndarray:
    """Return ``x`` as float32 rows the model described by ``data`` can take, or raise InputError."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (ValueError, TypeError):
        raise _bad(what, "rows must be lists of numbers of equal length") from None
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise _bad(what, f"expected a non-empty list of rows, got shape {list(arr.shape)}")
    dim = int(data["dim"])
    if arr.shape[1] != dim:
        raise _bad(what, f"each row must have {dim} values (the model's width), got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        row, col = np.argwhere(~np.isfinite(arr))[0]
        raise _bad(what, f"non-finite value at row {row}, column {col}")
    # Models run in float32: beyond its range a value would silently become infinite.
    big = np.abs(arr) > np.finfo(np.float32).max
    if big.any():
        row, col = np.argwhere(big)[0]
        raise _bad(what, f"value {arr[row, col]:g} at row {row}, column {col} is beyond float32 range")
    levels = data.get("levels")
    if levels:
        low, high = 0, levels - 1
        bad = (arr < low) | (arr > high)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise _bad(
                what,
                f"value {arr[row, col]:g} at row {row}, column {col} is outside the data's range {low}..{high}",
            )
        off = arr != np.round(arr)
        if off.any():
            row, col = np.argwhere(off)[0]
            raise _bad(
                what,
                f"value {arr[row, col]:g} at row {row}, column {col} is not one of the integer levels {low}..{high}",
            )
    return arr.astype(np.float32)


def check_labels(
    labels: Any, classes: int | None, rows: int | None = None, what: str = "labels"
) -> np.ndarray:
    """Class labels as an int64 array (one per row), or InputError naming ``what``: the model
    must be conditional, each label an integer in 0..classes-1, and (given ``rows``) one per row."""
    if classes is None:
        raise InputError(what, f"{what}: this model is not conditional; it takes no class labels")
    arr = np.asarray(labels if isinstance(labels, list | tuple | np.ndarray) else [labels])
    if arr.dtype == object or arr.dtype == bool or arr.dtype.kind not in "iuf" or arr.ndim != 1:
        raise _bad(what, f"must be integers in 0..{classes - 1}" + ("" if arr.ndim <= 1 else ", one per row"))
    if arr.size == 0:
        raise _bad(what, "no labels")
    if arr.dtype.kind == "f":
        off = ~np.isfinite(arr) | (arr != np.round(np.nan_to_num(arr)))
        if off.any():
            i = int(np.argmax(off))
            raise _bad(what, f"label {arr[i]!r} at position {i} is not an integer")
    out = arr.astype(np.float64)
    bad = (out < 0) | (out > classes - 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise _bad(what, f"label {arr[i]:g} at position {i} is outside the model's classes 0..{classes - 1}")
    if rows is not None and len(out) != rows:
        raise _bad(what, f"{len(out)} labels for {rows} rows: give one label per row")
    return out.astype(np.int64)
