"""`categorical`: independent per-dimension categorical over the data's levels (exact mass).

The pseudo-count that smooths the level frequencies is chosen on validation data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plugins.baselines.config import CategoricalConfig, CategoricalModel
from registry.contract.dataset import DataError, Dataset
from registry.contract.family import Capability, Family, GraphSpec, TrainControl

PSEUDO_COUNTS = (0.01, 0.03, 0.1, 0.3, 1.0)


def _fit(x: np.ndarray, levels: int, pseudo_count: float) -> np.ndarray:
    counts = np.stack([(x == level).sum(0) for level in range(levels)], 1) + pseudo_count
    return np.log(counts / counts.sum(1, keepdims=True))


def _score(log_probs: np.ndarray, x: np.ndarray) -> np.ndarray:
    idx = np.clip(np.round(x), 0, log_probs.shape[1] - 1).astype(int)
    return log_probs[np.arange(log_probs.shape[0])[None, :], idx].sum(1)


class CategoricalFamily(Family):
    name = "categorical"
    description = "independent per-dimension categorical over discrete levels (exact likelihood)"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB})
    Config = CategoricalConfig

    def train(self, data: Dataset, config: CategoricalConfig, control: TrainControl) -> CategoricalModel:
        if not data.discrete:
            raise DataError("categorical needs discrete data (integer levels; pass --levels)")
        candidates = [config.pseudo_count] if config.pseudo_count else PSEUDO_COUNTS
        best = max(
            candidates,
            key=lambda a: _score(_fit(data.train, data.levels, a), data.validation).mean(),
        )
        return CategoricalModel(config, _fit(data.train, data.levels, best), best)

    def sample(self, model: CategoricalModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        cdf = np.cumsum(np.exp(model.log_probs), 1)[:, :-1]
        return (noise["u"][:, :, None] >= cdf[None]).sum(2).astype(np.float64)

    def log_prob(self, model: CategoricalModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        return _score(model.log_probs, x)

    def export(self, model: CategoricalModel, directory: Path) -> list[GraphSpec]:
        from plugins.baselines.export import export_categorical

        return export_categorical(model, directory)

    def weights(self, model: CategoricalModel) -> dict[str, np.ndarray]:
        return {"log_probs": model.log_probs, "pseudo_count": np.array(model.pseudo_count)}
