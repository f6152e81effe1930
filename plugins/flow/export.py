"""The flow's ONNX graphs: sampler (z -> x) and scorer (x[, u] -> log-likelihood or bound)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from plugins.flow.config import FlowModel
from plugins.flow.dequantize import variational_log_weight
from registry.contract.family import GraphSpec, NoiseInput
from registry.pipeline.export import export_torch


class _Sampler(nn.Module):
    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.sample(z)


class _Bound(nn.Module):
    """log p(x + u): one draw of the uniform dequantisation bound."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x + u)


class _VariationalBound(nn.Module):
    """log p(x + u) - log q(u|x), u = h(eps; x): one draw of the variational dequantisation bound."""

    def __init__(self, flow: nn.Module, dequantizer: nn.Module) -> None:
        super().__init__()
        self.flow = flow
        self.dequantizer = dequantizer

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return variational_log_weight(self.flow, self.dequantizer, x, eps)


class _LogProb(nn.Module):
    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)


def export_flow(model: FlowModel, directory: Path) -> list[GraphSpec]:
    flow = model.flow.eval()
    d = model.dim
    example = torch.zeros(4, d)
    z = NoiseInput(name="z", dist="normal", dim=d)
    export_torch(_Sampler(flow), {"z": example}, "x", directory / "sampler.onnx")
    graphs = [GraphSpec(role="sampler", file="sampler.onnx", x_input=None, noise=[z], output="x")]
    if model.levels:
        # The service draws the noise: uniform u, or the normal eps that q(u|x) transforms.
        if model.dequantizer is None:
            noise = NoiseInput(name="u", dist="uniform", dim=d)
            scorer: nn.Module = _Bound(flow)
        else:
            noise = NoiseInput(name="eps", dist="normal", dim=d)
            scorer = _VariationalBound(flow, model.dequantizer.eval())
        export_torch(
            scorer, {"x": example, noise.name: example + 0.5}, "log_likelihood", directory / "scorer.onnx"
        )
        graphs.append(
            GraphSpec(role="scorer", file="scorer.onnx", kind="bound", noise=[noise], output="log_likelihood")
        )
    else:
        export_torch(_LogProb(flow), {"x": example}, "log_likelihood", directory / "scorer.onnx")
        graphs.append(GraphSpec(role="scorer", file="scorer.onnx", kind="log_prob", output="log_likelihood"))
    return graphs
