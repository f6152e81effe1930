"""JSON bodies in and out: parsed once with orjson, rows turned into numpy arrays at C speed.

A batch of 1,024 digits is 65,536 JSON numbers: the standard library's parser, per-element
pydantic validation and ``ndarray.tolist()`` each cost more than the ONNX Runtime call itself
(benchmarks/RESULTS.md, Hardening), so the hot path avoids all three.
"""

from __future__ import annotations

import contextvars
import itertools
import json
from typing import Any

import numpy as np
import orjson

# Whether the body being validated may hold JSON booleans: numpy would quietly read
# [true, 0.5] as [1.0, 0.5], so rows are walked for them only when the raw text says so.
_MAY_HOLD_BOOLS: contextvars.ContextVar[bool] = contextvars.ContextVar("may_hold_bools", default=True)


def loads(body: bytes) -> Any:
    """The parsed body; raises ValueError for anything that is not JSON.

    The standard library is the fallback because it also reads NaN and Infinity literals,
    which JSON lacks but clients send: refusing them as "x: non-finite value" names the field,
    where a bare parse error could not.
    """
    _MAY_HOLD_BOOLS.set(b"true" in body or b"false" in body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def dumps(payload: Any) -> bytes:
    """orjson with numpy arrays written directly; NaN and infinities become null."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


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


def as_rows(value: Any, min_rows: int, max_rows: int) -> np.ndarray:
    """A JSON list of rows of numbers as a float64 array; ValueError says what is wrong.

    numpy infers the array without a Python-level loop; the exact walk runs only when the
    inferred array is not a 2-D array of numbers, or when booleans may be present.
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
    if fast and not (_MAY_HOLD_BOOLS.get() and _has_bool(value)):
        return arr.astype(np.float64, copy=False)
    problem = _row_problem(value)
    if problem:
        raise ValueError(problem)
    try:  # only numbers, but some beyond int64 (numpy made them objects)
        return np.array(value, dtype=np.float64)
    except OverflowError:
        raise ValueError("a value is too large for a 64-bit float") from None


def _has_bool(value: list[Any]) -> bool:
    return any(type(v) is bool for v in itertools.chain.from_iterable(value))
