"""`noise-mixture`: w p(x) + (1 - w) noise(x), wrapping a stored model (w = 0.01 by default).

Its log-likelihood is at least log p(x) + log w (log 100 below p's for w = 0.01), yet a
fraction 1 - w of its samples are noise: the counter-example to likelihood as a quality
measure. The base model's ONNX graphs are reused as they are stored: the mixture's graphs
are the base graphs merged with a small head, so the base needs no retraining or torch.

Noise: uniform over the levels on discrete data (mass L^-D), a broad Gaussian
N(mean, (3 std)^2) of the training data otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from registry import Capability, Family, FamilyConfig, GraphSpec


class MixtureConfig(FamilyConfig):
    base: str = Field(description="stored model to wrap, name[:version]")
    weight: float = Field(0.01, gt=0, lt=1, description="weight of the base model")


@dataclass
class MixtureModel:
    config: MixtureConfig
    base_tag: str
    base_kind: str
    levels: int | None
    mean: np.ndarray
    scale: np.ndarray  # noise std per dimension (continuous data)
    dim: int

    def log_noise(self, y: np.ndarray) -> np.ndarray:
        """log density of the noise at y (y = x + u on discrete data)."""
        if self.levels:
            return np.full(len(y), -self.dim * math.log(self.levels))
        z = (y - self.mean) / self.scale
        return (-0.5 * z * z - np.log(self.scale) - 0.5 * math.log(2 * math.pi)).sum(1)


class NoiseMixtureFamily(Family):
    name = "noise-mixture"
    description = "w p(x) + (1 - w) noise around a stored model (example plugin)"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB, Capability.BOUND})
    Config = MixtureConfig

    def train(self, data, config: MixtureConfig, control) -> MixtureModel:
        from registry.runtime.models import LoadedModel
        from registry.runtime.store import get_model

        base = get_model(config.base)
        if base.data["dim"] != data.dim or base.data.get("levels") != data.levels:
            raise ValueError(f"base model {base.tag} was trained on different data than {data.name!r}")
        kinds = [k for k in ("log_prob", "bound") if k in base.capabilities]
        if not kinds or "sample" not in base.capabilities:
            raise ValueError(f"base model {base.tag} needs sample and log_prob or bound")
        x = data.train.astype(np.float64)
        model = MixtureModel(
            config, base.tag, kinds[0], data.levels, x.mean(0), 3 * x.std(0) + 1e-3, data.dim
        )
        model._base = LoadedModel(base, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
        return model

    def model_capabilities(self, model: MixtureModel) -> set[Capability]:
        return {Capability.SAMPLE, Capability(model.base_kind)}

    def _noise_sample(self, model: MixtureModel, n: np.ndarray) -> np.ndarray:
        if model.levels:
            return np.minimum(np.floor(n * model.levels), model.levels - 1)
        return model.mean + model.scale * n

    def sample(self, model: MixtureModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        base = model._base  # type: ignore[attr-defined]
        spec = base.stored.graph("sampler")
        base_x = base.run(spec, {k.name: noise[f"base_{k.name}"] for k in spec.noise})
        other = self._noise_sample(model, noise["noise"].astype(np.float64))
        return np.where(noise["pick"] < model.config.weight, base_x, other)

    def _score(self, model: MixtureModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        base = model._base  # type: ignore[attr-defined]
        spec = base.stored.graph("scorer", model.base_kind)
        feeds = {k.name: noise[f"base_{k.name}"] for k in spec.noise}
        feeds[spec.x_input or "x"] = x.astype(np.float32)
        log_base = base.run(spec, feeds).astype(np.float64)
        y = x + noise["base_u"] if model.levels and "base_u" in noise else x
        a = log_base + math.log(model.config.weight)
        b = model.log_noise(y) + math.log(1 - model.config.weight)
        return np.logaddexp(a, b)

    def log_prob(self, model: MixtureModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        return self._score(model, x, noise)

    def bound(self, model: MixtureModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        return self._score(model, x, noise)

    def config_of(self, model: MixtureModel) -> MixtureConfig:
        return model.config.model_copy(update={"base": model.base_tag})

    def export(self, model: MixtureModel, directory: Path) -> list[GraphSpec]:
        from genreg_kde.mixture_export import export_mixture

        return export_mixture(model, model._base.stored, directory)  # type: ignore[attr-defined]

    def weights(self, model: MixtureModel) -> dict[str, np.ndarray]:
        return {"mean": model.mean, "scale": model.scale, "weight": np.array(model.config.weight)}
