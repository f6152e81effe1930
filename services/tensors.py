"""Open Inference Protocol tensors in and out: JSON ``data`` and the binary tensor data extension.

A binary request is the JSON header (its length in the ``Inference-Header-Content-Length``
header) followed by each binary input's bytes, in the order of ``inputs``, each declaring its
``binary_data_size``. Binary inputs are read with ``np.frombuffer`` straight from the body: at
batch 1,024 a parse of 65,536 JSON numbers cost more than the model (benchmarks/RESULTS.md), and
a view costs nothing. Outputs go back the same way when the client asks (``binary_data`` on an
output, or ``binary_data_output`` on the request). Every problem is a TensorError naming the
tensor, which the routes answer with 400.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.jsonbody import dumps
from services.schemas import V2_DATATYPES, V2_NUMBERS, V2InputTensor

# Little-endian, as the protocol's binary data is. No BOOL: numpy would read it as 0 and 1,
# which /score refuses in x as well.
NUMPY = {
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
assert tuple(NUMPY) == V2_NUMBERS
DATATYPE = {dtype: name for name, dtype in NUMPY.items()}
HEADER = "inference-header-content-length"


class TensorError(ValueError):
    """A tensor the server cannot read; ``field`` names it (the tensor's name, or the header)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary part) of a request body; the binary part is empty without the header."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise TensorError(
            "Inference-Header-Content-Length",
            f"Inference-Header-Content-Length: {header_length!r} is not a length within the body's "
            f"{len(body)} bytes",
        )
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _dtype(tensor: V2InputTensor) -> np.dtype:
    if tensor.datatype in NUMPY:
        return NUMPY[tensor.datatype]
    if tensor.datatype in V2_DATATYPES:  # BOOL, BYTES, BF16: the protocol's, not numbers for a model
        raise TensorError(
            tensor.name, f"{tensor.name}: datatype {tensor.datatype} is not supported; send FP32"
        )
    raise TensorError(
        tensor.name,
        f"{tensor.name}: unknown datatype {tensor.datatype[:40]!r}; one of {', '.join(NUMPY)}",
    )


def _holds(value: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a nested list holds a value of one of ``kinds`` (for bools, which numpy reads as 1/0)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, kinds):
            return True
    return False


def _from_json(tensor: V2InputTensor, dtype: np.dtype, count: int, may_hold_bools: bool) -> np.ndarray:
    name, data = tensor.name, tensor.data
    if not isinstance(data, list):
        raise TensorError(name, f"{name}: data must be a list of numbers (flat or nested, row-major)")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise TensorError(name, f"{name}: data must be a flat or evenly nested list of numbers") from None
    if arr.dtype.kind not in "iuf" or (may_hold_bools and _holds(data, (bool,))):
        raise TensorError(name, f"{name}: data must hold {tensor.datatype} values only")
    if arr.size != count:
        raise TensorError(
            name, f"{name}: data holds {arr.size} values but shape {tensor.shape} needs {count}"
        )
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not (
            np.all(arr == np.round(arr)) and arr.min(initial=0) >= info.min and arr.max(initial=0) <= info.max
        ):
            raise TensorError(name, f"{name}: data holds a value that is not a {tensor.datatype}")
    # Floating-point data stays float64 as parsed: the row check then names a value beyond
    # float32's range, where a cast would have made it infinite first (as /score does).
    return arr.reshape(tensor.shape)


def decode_inputs(
    inputs: Iterable[V2InputTensor], binary: memoryview, *, may_hold_bools: bool = True
) -> dict[str, np.ndarray]:
    """Each input tensor as an array of its shape: JSON ``data``, or a view of the binary part."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in inputs:
        name = tensor.name
        if name in out:
            raise TensorError(name, f"{name}: input given twice")
        dtype = _dtype(tensor)
        count = math.prod(tensor.shape)
        size = tensor.parameters.binary_data_size if tensor.parameters else None
        if size is None:
            if tensor.data is None:
                raise TensorError(name, f"{name}: neither data nor parameters.binary_data_size")
            out[name] = _from_json(tensor, dtype, count, may_hold_bools)
            continue
        if tensor.data is not None:
            raise TensorError(name, f"{name}: both data and parameters.binary_data_size")
        expected = count * dtype.itemsize
        if size != expected:
            raise TensorError(
                name,
                f"{name}: binary_data_size {size} disagrees with shape {tensor.shape} x "
                f"{tensor.datatype} ({expected} bytes)",
            )
        if offset + size > len(binary):
            raise TensorError(
                name,
                f"{name}: its {size} bytes run past the end of the body "
                f"({len(binary) - offset} bytes left after the header and earlier inputs)",
            )
        arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(tensor.shape)
        out[name] = arr
        offset += size
    if offset != len(binary):
        raise TensorError(
            "inputs",
            f"inputs: the body holds {len(binary)} bytes after the header but the inputs' "
            f"binary_data_size add up to {offset}",
        )
    return out


@dataclass(frozen=True)
class Output:
    """One output tensor: its protocol datatype follows the array's dtype."""

    name: str
    array: np.ndarray

    @property
    def datatype(self) -> str:
        return DATATYPE[self.array.dtype.newbyteorder("<")]


def encode_response(
    head: dict[str, Any], outputs: list[Output], binary: set[str]
) -> tuple[bytes, int | None]:
    """The response body and, when any output travels as binary data, the JSON header's length.

    ``binary`` names the outputs to send as binary data after the JSON header; the rest are
    written inline (non-finite values as null, which JSON requires).
    """
    tensors, chunks = [], []
    for out in outputs:
        arr = np.ascontiguousarray(out.array, dtype=out.array.dtype.newbyteorder("<"))
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(arr.shape)}
        if out.name in binary:
            data = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = arr.reshape(-1)
        tensors.append(entry)
    header = dumps({**head, "outputs": tensors})
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
