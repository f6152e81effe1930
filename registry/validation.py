"""Checks on rows sent for scoring: width, finiteness, range and lattice of the model's data."""

from __future__ import annotations

from typing import Any

import numpy as np


class InputError(ValueError):
    """Rows that a model cannot score; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_input(x: Any, data: dict[str, Any], what: str = "x") -> np.ndarray:
    """Return ``x`` as float32 rows, or raise InputError saying what is wrong and where."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(what, "rows must be lists of numbers of equal length") from None
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(what, f"expected a non-empty list of rows, got shape {list(arr.shape)}")
    dim = int(data["dim"])
    if arr.shape[1] != dim:
        raise InputError(what, f"each row must have {dim} values (the model's width), got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        row, col = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(what, f"non-finite value at row {row}, column {col}")
    # Models run in float32: beyond its range a value would silently become infinite.
    big = np.abs(arr) > np.finfo(np.float32).max
    if big.any():
        row, col = np.argwhere(big)[0]
        raise InputError(what, f"value {arr[row, col]:g} at row {row}, column {col} is beyond float32 range")
    levels = data.get("levels")
    if levels:
        low, high = 0, levels - 1
        bad = (arr < low) | (arr > high)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise InputError(
                what,
                f"value {arr[row, col]:g} at row {row}, column {col} is outside the data's range {low}..{high}",
            )
        off = arr != np.round(arr)
        if off.any():
            row, col = np.argwhere(off)[0]
            raise InputError(
                what,
                f"value {arr[row, col]:g} at row {row}, column {col} is not one of the integer levels {low}..{high}",
            )
    return arr.astype(np.float32)
