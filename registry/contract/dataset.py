"""What a family's ``train`` receives: rows split into train, validation and test, and what they are."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from registry.runtime.images import ImageShape, ShapeError, image_shape, size


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
    image_shape: ImageShape | None = None  # (height, width, channels), channels last
    log_density: Callable[[np.ndarray], np.ndarray] | None = None  # exact, for toys
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # Known generative factors per split (integer indices), for disentanglement metrics.
    factors: dict[str, np.ndarray] | None = None
    factor_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            self.image_shape = image_shape(self.image_shape)
        except ShapeError as exc:
            raise DataError(str(exc)) from None
        if self.image_shape is not None and size(self.image_shape) != self.dim:
            raise DataError(
                f"image shape {list(self.image_shape)} holds {size(self.image_shape)} values, "
                f"but the rows are {self.dim} wide"
            )

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
