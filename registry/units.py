"""Unit conversions for scores: nats per example to bits per dimension."""

from __future__ import annotations

import math

import numpy as np


def bits_per_dim(log_likelihood_nats: np.ndarray | float, dim: int) -> np.ndarray:
    """-log2 P(x) / D for a per-example log-likelihood (or bound) in nats."""
    return -np.asarray(log_likelihood_nats, dtype=np.float64) / (dim * math.log(2))
