"""The baselines' options and trained-model records (closed-form fits: their weights are the model).

The family classes and export import these; this module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from registry.contract.family import FamilyConfig


class GaussianConfig(FamilyConfig):
    min_std: float = Field(1e-3, gt=0, description="floor on each dimension's std")


@dataclass
class GaussianModel:
    config: GaussianConfig
    mean: np.ndarray
    std: np.ndarray
    levels: int | None


class CategoricalConfig(FamilyConfig):
    pseudo_count: float | None = Field(
        None, gt=0, description="Laplace smoothing; unset: the best on validation"
    )


@dataclass
class CategoricalModel:
    config: CategoricalConfig
    log_probs: np.ndarray  # (dim, levels), or (classes, dim, levels) for p(x|y)
    pseudo_count: float

    @property
    def levels(self) -> int:
        return self.log_probs.shape[-1]

    @property
    def classes(self) -> int | None:
        return self.log_probs.shape[0] if self.log_probs.ndim == 3 else None
