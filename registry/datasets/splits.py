"""Fixed-seed splits, so that a data set's test rows are the same on every machine and never trained on."""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices 0..n-1 in a seeded random order, cut at the given fractions (the rest is the last
    part): index rows and their labels (or factors) with the same parts so that they stay paired."""
    idx = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([round(f * n) for f in fractions])
    return np.split(idx, cuts)


def split_rows(x: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Rows of ``x`` in a seeded random order, cut at the given fractions (the rest is the last part)."""
    return [x[i] for i in split_indices(len(x), fractions, seed)]
