"""Unit conversions for scores: nats per example to bits per dimension."""

from __future__ import annotations

import math

import numpy as np


def bits_per_dim(log_likelihood_nats: np.ndarray | float, dim: int) -> np.ndarray:
    """-log2 P(x) / D for a per-example log-likelihood (or bound) in nats."""
    return -np.asarray(log_likelihood_nats, dtype=np.float64) / (dim * math.log(2))


def mean_and_stderr(values: np.ndarray) -> tuple[float, float | None]:
    """The mean over rows and its standard error (None for fewer than two rows)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), None
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def score_summary(scores: np.ndarray, dim: int | None, prefix: str = "") -> dict[str, float | None]:
    """Mean and standard error over rows, in nats and (given ``dim``) bits/dim."""
    mean, stderr = mean_and_stderr(scores)
    out: dict[str, float | None] = {f"{prefix}mean": mean, f"{prefix}stderr": stderr}
    if dim is not None:
        out[f"{prefix}mean_bits_per_dim"] = float(bits_per_dim(mean, dim))
        out[f"{prefix}stderr_bits_per_dim"] = None if stderr is None else stderr / (dim * math.log(2))
    return out
