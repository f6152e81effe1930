"""JSON bodies in and out: parsed once with orjson, written with numpy arrays serialised directly.

A batch of 1,024 digits is 65,536 JSON numbers: the standard library's parser and
``ndarray.tolist()`` each cost more than the ONNX Runtime call itself (benchmarks/RESULTS.md,
Hardening), so the hot path avoids both. Rows become arrays in registry.runtime.rows.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(body: bytes) -> Any:
    """The parsed body; raises ValueError for anything that is not JSON.

    The standard library is the fallback because it also reads NaN and Infinity literals,
    which JSON lacks but clients send: refusing them as "x: non-finite value" names the field,
    where a bare parse error could not.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def json_object(body: bytes) -> dict[str, Any] | None:
    """The parsed body if it is a JSON object; None for anything else (the caller's 400)."""
    try:
        parsed = loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def may_hold_bools(body: bytes) -> bool:
    """Whether the raw body may hold JSON booleans, which numpy would read as 1.0 and 0.0."""
    return b"true" in body or b"false" in body


def dumps(payload: Any) -> bytes:
    """orjson with numpy arrays written directly; NaN and infinities become null."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
