"""Fixed-seed splits, so that a data set's test rows are the same on every machine and never trained on."""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0


def split_rows(x: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Rows of ``x`` in a seeded random order, cut at the given fractions (the rest is the last part)."""
    idx = np.random.default_rng(seed).permutation(len(x))
    cuts = np.cumsum([round(f * len(x)) for f in fractions])
    return [x[i] for i in np.split(idx, cuts)]
