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
    # Class labels per split (int64, one per row, 0..classes-1): set when the model is to be
    # trained conditionally (--conditional on a built-in, --labels for a user file).
    labels: dict[str, np.ndarray] | None = None
    class_names: tuple[str, ...] = ()

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
        if self.labels is not None:
            self._check_labels()

    def _check_labels(self) -> None:
        assert self.labels is not None
        for split in ("train", "validation", "test"):
            y, rows = self.labels.get(split), len(getattr(self, split))
            if y is None or y.shape != (rows,):
                got = "none" if y is None else f"shape {list(y.shape)}"
                raise DataError(f"labels: the {split} split has {rows} rows but {got} labels")
            # bincount (the class prior) takes non-negative integers only
            if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
                raise DataError(f"labels: the {split} split's labels must be integers 0..K-1")
        classes = int(max(int(y.max(initial=0)) for y in self.labels.values())) + 1
        if self.class_names and len(self.class_names) < classes:
            raise DataError(f"labels: {classes} classes but {len(self.class_names)} class names")
        classes = max(classes, len(self.class_names))
        if classes < 2:
            raise DataError("labels: a conditional model needs at least 2 classes")
        missing = _first_missing(np.unique(self.labels["train"]), classes, 10)
        if missing:
            raise DataError(
                f"labels: class(es) {', '.join(map(str, missing))} never occur in the training "
                "split, so p(y) would be 0 there; relabel to 0..K-1 without gaps"
            )

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def discrete(self) -> bool:
        return self.levels is not None

    @property
    def classes(self) -> int | None:
        """How many classes the labels take (None: unconditional data)."""
        if self.labels is None:
            return None
        top = max(int(y.max(initial=0)) for y in self.labels.values()) + 1
        return max(top, len(self.class_names))

    def class_prior(self) -> np.ndarray:
        """p(y): each class's frequency in the training split."""
        assert self.labels is not None and self.classes is not None
        counts = np.bincount(self.labels["train"], minlength=self.classes)
        return counts / counts.sum()

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
            **self._describe_labels(),
        }

    def _describe_labels(self) -> dict[str, Any]:
        if self.labels is None:
            return {}
        return {
            "classes": self.classes,
            "class_names": list(self.class_names) or [str(c) for c in range(self.classes or 0)],
            "class_prior": [float(p) for p in self.class_prior()],
            "labels_fingerprint": fingerprint(self.labels["train"]),
        }


def _first_missing(present: np.ndarray, classes: int, limit: int) -> list[int]:
    """Up to ``limit`` of 0..classes-1 absent from the sorted ``present``, in order; a walk,
    not a set of all classes, since one stray label of 10**9 would make that set 10**9 long."""
    missing: list[int] = []
    have = iter(present.tolist())
    nxt = next(have, None)
    for c in range(classes):
        if nxt == c:
            nxt = next(have, None)
            continue
        missing.append(c)
        if len(missing) == limit:
            break
    return missing


def fingerprint(x: np.ndarray) -> str:
    """sha256 over the shape, dtype and bytes of an array."""
    arr = np.ascontiguousarray(x)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()
