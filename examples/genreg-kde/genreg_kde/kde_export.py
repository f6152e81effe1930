"""The KDE's ONNX graphs, written as small PyTorch modules (torch comes with genreg[train])."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from genreg_kde.kde import KDEModel
from registry import GraphSpec, NoiseInput
from registry.pipeline.export import export_torch


class _Sampler(nn.Module):
    def __init__(self, centres: torch.Tensor, eps: float, levels: int | None) -> None:
        super().__init__()
        self.register_buffer("centres", centres)
        self.eps, self.levels = eps, levels

    def forward(self, pick: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n = self.centres.shape[0]
        idx = torch.clamp((pick[:, 0] * n).to(torch.int64), 0, n - 1)
        y = self.centres[idx] + self.eps * z
        if self.levels:
            return torch.clamp(torch.floor(y), 0, self.levels - 1)
        return y


class _Score(nn.Module):
    """log p(y) in float64 inside the graph: with a small eps the log-density is thousands of
    nats, and float32 distance sums would lose the digits that matter."""

    def __init__(self, centres: torch.Tensor, eps: float) -> None:
        super().__init__()
        centres = centres.double()
        self.register_buffer("centres", centres)
        self.register_buffer("sq", (centres * centres).sum(1))
        n, d = centres.shape
        self.scale = 1.0 / (2 * eps**2)
        self.const = -math.log(n) - 0.5 * d * math.log(2 * math.pi * eps**2)

    def forward(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        y = (x if u is None else x + u).double()
        d2 = (y * y).sum(1, keepdim=True) + self.sq.unsqueeze(0) - 2.0 * y @ self.centres.T
        return (torch.logsumexp(-torch.clamp(d2, min=0.0) * self.scale, dim=1) + self.const).float()


def export_kde(model: KDEModel, directory: Path) -> list[GraphSpec]:
    centres = torch.as_tensor(model.centres, dtype=torch.float32)
    d = centres.shape[1]
    eps = model.config.eps
    export_torch(
        _Sampler(centres, eps, model.levels),
        {"pick": torch.rand(4, 1), "z": torch.randn(4, d)},
        "x",
        directory / "sampler.onnx",
    )
    noise = [NoiseInput(name="pick", dist="uniform", dim=1), NoiseInput(name="z", dist="normal", dim=d)]
    graphs = [GraphSpec(role="sampler", file="sampler.onnx", x_input=None, noise=noise, output="x")]
    score = _Score(centres, eps)
    if model.levels:
        export_torch(
            score,
            {"x": torch.zeros(4, d), "u": torch.rand(4, d)},
            "log_likelihood",
            directory / "scorer.onnx",
        )
        u = NoiseInput(name="u", dist="uniform", dim=d)
        graphs.append(
            GraphSpec(role="scorer", file="scorer.onnx", kind="bound", noise=[u], output="log_likelihood")
        )
    else:
        export_torch(score, {"x": torch.zeros(4, d)}, "log_likelihood", directory / "scorer.onnx")
        graphs.append(GraphSpec(role="scorer", file="scorer.onnx", kind="log_prob", output="log_likelihood"))
    return graphs
