"""`kde`: an isotropic Gaussian kernel density estimate over the training points."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from registry import Capability, Family, FamilyConfig, GraphSpec


class KDEConfig(FamilyConfig):
    eps: float = Field(0.05, gt=0, le=100, description="kernel standard deviation, data units")
    max_points: int = Field(5000, ge=1, le=100_000, description="training points kept as centres")


@dataclass
class KDEModel:
    config: KDEConfig
    centres: np.ndarray  # (n, d) float32
    levels: int | None


def kde_log_density(y: np.ndarray, centres: np.ndarray, eps: float) -> np.ndarray:
    d = centres.shape[1]
    out = np.empty(len(y))
    for start in range(0, len(y), 512):
        chunk = y[start : start + 512].astype(np.float64)
        d2 = ((chunk[:, None, :] - centres[None].astype(np.float64)) ** 2).sum(-1)
        a = -d2 / (2 * eps**2)
        top = a.max(1, keepdims=True)
        out[start : start + 512] = (top + np.log(np.exp(a - top).sum(1, keepdims=True)))[:, 0]
    return out - math.log(len(centres)) - 0.5 * d * math.log(2 * math.pi * eps**2)


class KDEFamily(Family):
    name = "kde"
    description = "Gaussian kernel density estimate on the training points (example plugin)"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB, Capability.BOUND})
    Config = KDEConfig

    def train(self, data, config: KDEConfig, control) -> KDEModel:
        x = data.train[: config.max_points].astype(np.float32)
        # On discrete data the density models y = x + u: centre the kernels on the cells.
        centres = x + 0.5 if data.discrete else x
        return KDEModel(config, centres, data.levels)

    def model_capabilities(self, model: KDEModel) -> set[Capability]:
        return {Capability.SAMPLE, Capability.BOUND if model.levels else Capability.LOG_PROB}

    def sample(self, model: KDEModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        n = len(model.centres)
        idx = np.minimum((noise["pick"][:, 0] * n).astype(np.int64), n - 1)
        y = model.centres[idx].astype(np.float64) + model.config.eps * noise["z"]
        if model.levels:
            return np.clip(np.floor(y), 0, model.levels - 1)
        return y

    def log_prob(self, model: KDEModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        return kde_log_density(x, model.centres, model.config.eps)

    def bound(self, model: KDEModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        return kde_log_density(x.astype(np.float64) + noise["u"], model.centres, model.config.eps)

    def export(self, model: KDEModel, directory: Path) -> list[GraphSpec]:
        from genreg_kde.kde_export import export_kde

        return export_kde(model, directory)

    def weights(self, model: KDEModel) -> dict[str, np.ndarray]:
        return {"centres": model.centres}


__all__ = ["KDEConfig", "KDEFamily", "KDEModel", "kde_log_density"]
