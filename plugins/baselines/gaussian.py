"""`gaussian`: a diagonal Gaussian, fitted in closed form.

On discrete data it models the uniformly dequantised y = x + u, and its score is the bound
log P(x) >= E_u log N(x + u); on continuous data its log_prob is exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from plugins.baselines.config import GaussianConfig, GaussianModel
from registry.contract.dataset import Dataset
from registry.contract.family import Capability, Family, GraphSpec, TrainControl


def gaussian_log_density(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (y - mean) / std
    return (-0.5 * z * z - np.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)


class GaussianFamily(Family):
    name = "gaussian"
    description = "diagonal Gaussian baseline (uniform dequantisation on discrete data)"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB, Capability.BOUND})
    Config = GaussianConfig

    def train(self, data: Dataset, config: GaussianConfig, control: TrainControl) -> GaussianModel:
        x = data.train.astype(np.float64)
        if data.discrete:
            # Moments of x + u with u ~ U[0, 1): the mean shifts by 1/2, the variance adds 1/12.
            mean, var = x.mean(0) + 0.5, x.var(0) + 1.0 / 12.0
        else:
            mean, var = x.mean(0), x.var(0)
        std = np.maximum(np.sqrt(var), config.min_std)
        return GaussianModel(config, mean, std, data.levels)

    def model_capabilities(self, model: GaussianModel) -> set[Capability]:
        return {Capability.SAMPLE, Capability.BOUND if model.levels else Capability.LOG_PROB}

    def sample(self, model: GaussianModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        y = model.mean + model.std * noise["z"].astype(np.float64)
        if model.levels:
            return np.clip(np.floor(y), 0, model.levels - 1)
        return y

    def log_prob(self, model: GaussianModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        return gaussian_log_density(x.astype(np.float64), model.mean, model.std)

    def bound(self, model: GaussianModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        return gaussian_log_density(x.astype(np.float64) + noise["u"], model.mean, model.std)

    def export(self, model: GaussianModel, directory: Path) -> list[GraphSpec]:
        from plugins.baselines.export import export_gaussian

        return export_gaussian(model, directory)

    def weights(self, model: GaussianModel) -> dict[str, np.ndarray]:
        return {"mean": model.mean, "std": model.std}
