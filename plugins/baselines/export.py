"""ONNX graphs of the baseline families, written as small PyTorch modules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plugins.baselines.config import CategoricalModel, GaussianModel
from registry.contract.family import Condition, GraphSpec, NoiseInput
from registry.pipeline.export import export_torch


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


class _GaussSampler(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray, levels: int | None) -> None:
        super().__init__()
        self.register_buffer("mean", _t(mean))
        self.register_buffer("std", _t(std))
        self.levels = levels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.mean + self.std * z
        if self.levels:
            return torch.clamp(torch.floor(y), 0, self.levels - 1)
        return y


class _GaussScore(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", _t(mean))
        self.register_buffer("log_std", _t(np.log(std)))
        self.register_buffer("inv_std", _t(1.0 / std))
        self.const = -0.5 * math.log(2 * math.pi)

    def forward(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        y = x if u is None else x + u
        z = (y - self.mean) * self.inv_std
        return (-0.5 * z * z - self.log_std + self.const).sum(1)


def export_gaussian(model: GaussianModel, directory: Path) -> list[GraphSpec]:
    d = len(model.mean)
    example = torch.zeros(4, d)
    export_torch(
        _GaussSampler(model.mean, model.std, model.levels), {"z": example}, "x", directory / "sampler.onnx"
    )
    graphs = [
        GraphSpec(
            role="sampler",
            file="sampler.onnx",
            x_input=None,
            noise=[NoiseInput(name="z", dist="normal", dim=d)],
            output="x",
        )
    ]
    score = _GaussScore(model.mean, model.std)
    if model.levels:
        export_torch(score, {"x": example, "u": example}, "log_likelihood", directory / "scorer.onnx")
        u = NoiseInput(name="u", dist="uniform", dim=d)
        graphs.append(
            GraphSpec(role="scorer", file="scorer.onnx", kind="bound", noise=[u], output="log_likelihood")
        )
    else:
        export_torch(score, {"x": example}, "log_likelihood", directory / "scorer.onnx")
        graphs.append(GraphSpec(role="scorer", file="scorer.onnx", kind="log_prob", output="log_likelihood"))
    return graphs


class _CatSampler(nn.Module):
    def __init__(self, log_probs: np.ndarray) -> None:
        super().__init__()
        cdf = np.cumsum(np.exp(log_probs), -1)[..., :-1]
        self.register_buffer("cdf", _t(cdf))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # The level is the number of CDF knots at or below u: inverse-CDF sampling.
        return (u.unsqueeze(2) >= self.cdf.unsqueeze(0)).to(torch.float32).sum(2)


class _CatClassSampler(_CatSampler):
    """p(x|y): the knots of each row's class (cdf is (classes, dim, levels - 1))."""

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (u.unsqueeze(2) >= self.cdf[y[:, 0]]).to(torch.float32).sum(2)


class _CatScore(nn.Module):
    def __init__(self, log_probs: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("log_probs", _t(log_probs))
        self.register_buffer("levels", torch.arange(log_probs.shape[-1], dtype=torch.float32))
        self.top = float(log_probs.shape[-1] - 1)

    def one_hot(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.clamp(torch.round(x), 0.0, self.top)
        return (idx.unsqueeze(2) == self.levels).to(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.one_hot(x) * self.log_probs.unsqueeze(0)).sum((1, 2))


class _CatClassScore(_CatScore):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return (self.one_hot(x) * self.log_probs[y[:, 0]]).sum((1, 2))


def export_categorical(model: CategoricalModel, directory: Path) -> list[GraphSpec]:
    d = model.log_probs.shape[-2]
    example = torch.zeros(4, d)
    condition = Condition(classes=model.classes) if model.classes else None
    if condition is None:
        sampler, scorer = _CatSampler(model.log_probs), _CatScore(model.log_probs)
        labels: dict[str, torch.Tensor] = {}
    else:
        sampler, scorer = _CatClassSampler(model.log_probs), _CatClassScore(model.log_probs)
        labels = {"y": torch.zeros(4, 1, dtype=torch.int64)}
    export_torch(sampler, {"u": example + 0.5, **labels}, "x", directory / "sampler.onnx")
    export_torch(scorer, {"x": example, **labels}, "log_likelihood", directory / "scorer.onnx")
    return [
        GraphSpec(
            role="sampler",
            file="sampler.onnx",
            x_input=None,
            noise=[NoiseInput(name="u", dist="uniform", dim=d)],
            output="x",
            condition=condition,
        ),
        GraphSpec(
            role="scorer", file="scorer.onnx", kind="log_prob", output="log_likelihood", condition=condition
        ),
    ]
