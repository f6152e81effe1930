"""`categorical`: independent per-dimension categorical over the data's levels (exact mass).

The pseudo-count that smooths the level frequencies is chosen on validation data. On labelled
data it is one such model per class, p(x|y) (a naive Bayes classifier by Bayes' rule): the
exact reference case of a conditional model.
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


def _fit_classes(x: np.ndarray, y: np.ndarray, classes: int, levels: int, pseudo_count: float) -> np.ndarray:
    """(classes, dim, levels): one smoothed categorical per class and dimension."""
    return np.stack([_fit(x[y == c], levels, pseudo_count) for c in range(classes)])


def _score_classes(log_probs: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.empty(len(x))
    for c in range(len(log_probs)):
        out[y == c] = _score(log_probs[c], x[y == c])
    return out


def _labels(noise: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(noise["y"]).reshape(-1).astype(int)


class CategoricalFamily(Family):
    name = "categorical"
    description = "independent per-dimension categorical over discrete levels (exact likelihood)"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB})
    Config = CategoricalConfig
    conditional = True

    def train(self, data: Dataset, config: CategoricalConfig, control: TrainControl) -> CategoricalModel:
        if not data.discrete:
            raise DataError("categorical needs discrete data (integer levels; pass --levels)")
        candidates = [config.pseudo_count] if config.pseudo_count else PSEUDO_COUNTS
        if data.labels is not None:
            y, classes = data.labels, data.classes or 0

            def fit(a: float) -> np.ndarray:
                return _fit_classes(data.train, y["train"], classes, data.levels, a)

            best = max(
                candidates, key=lambda a: _score_classes(fit(a), data.validation, y["validation"]).mean()
            )
            return CategoricalModel(config, fit(best), best)
        best = max(
            candidates,
            key=lambda a: _score(_fit(data.train, data.levels, a), data.validation).mean(),
        )
        return CategoricalModel(config, _fit(data.train, data.levels, best), best)

    def sample(self, model: CategoricalModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        cdf = np.cumsum(np.exp(model.log_probs), -1)[..., :-1]
        if model.classes:
            cdf = cdf[_labels(noise)]  # (n, dim, levels - 1): each row's class
        else:
            cdf = cdf[None]
        return (noise["u"][:, :, None] >= cdf).sum(2).astype(np.float64)

    def log_prob(self, model: CategoricalModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        if model.classes:
            return _score_classes(model.log_probs, x, _labels(noise))
        return _score(model.log_probs, x)

    def export(self, model: CategoricalModel, directory: Path) -> list[GraphSpec]:
        from plugins.baselines.export import export_categorical

        return export_categorical(model, directory)

    def weights(self, model: CategoricalModel) -> dict[str, np.ndarray]:
        return {"log_probs": model.log_probs, "pseudo_count": np.array(model.pseudo_count)}
