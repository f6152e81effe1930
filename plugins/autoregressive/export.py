"""The autoregressive model's ONNX graphs: the scorer (x -> exact log-likelihood, one call) and
the sampler's step (state, step, noise -> state), which the serving runtime applies D times.
A conditional model's graphs take the class label y too ((n, 1) int64): the scorer answers
log p(x|y), and every step of the sampler gets the same y."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from plugins.autoregressive.config import ARModel
from registry.contract.family import Condition, GraphSpec, NoiseInput, StepLoop
from registry.pipeline.export import export_torch


class _LogProb(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.log_prob(x)


# One module per signature: the exporter maps named positional inputs, not *args.
class _DiscreteStep(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, state: torch.Tensor, step: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.net.step(state, step, g)


class _ContinuousStep(_DiscreteStep):
    def forward(
        self, state: torch.Tensor, step: torch.Tensor, g: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        return self.net.step(state, step, g, z)


class _ClassLogProb(_LogProb):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.net.log_prob(x, y)


class _ClassDiscreteStep(_DiscreteStep):
    def forward(  # type: ignore[override]
        self, state: torch.Tensor, step: torch.Tensor, g: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return self.net.step(state, step, g, y=y)


class _ClassContinuousStep(_DiscreteStep):
    def forward(  # type: ignore[override]
        self, state: torch.Tensor, step: torch.Tensor, g: torch.Tensor, z: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return self.net.step(state, step, g, z, y=y)


def sampler_noise(model: ARModel) -> list[NoiseInput]:
    """Gumbel draws over the levels (discrete), or over the components plus a normal (continuous)."""
    if model.levels:
        # one Gumbel draw per level of each value the step fills (a colour pixel: every channel)
        per_step = model.net.network.dim // model.net.steps
        return [NoiseInput(name="g", dist="gumbel", dim=per_step * model.levels)]
    k = model.config.components
    return [NoiseInput(name="g", dist="gumbel", dim=k), NoiseInput(name="z", dist="normal", dim=1)]


def export_autoregressive(model: ARModel, directory: Path) -> list[GraphSpec]:
    net = model.net.eval()
    d = model.dim
    example = torch.zeros(4, d)
    condition = Condition(classes=model.classes) if model.classes else None
    # The label input last, after the noise: the exporter names inputs by position.
    labels = {"y": torch.zeros(4, 1, dtype=torch.int64)} if condition else {}
    scorer = (_ClassLogProb if condition else _LogProb)(net)
    export_torch(scorer, {"x": example, **labels}, "log_likelihood", directory / "scorer.onnx")
    noise = sampler_noise(model)
    inputs = {"state": example, "step": torch.zeros(4, 1, dtype=torch.int64)}
    inputs |= {n.name: torch.zeros(4, n.dim) for n in noise}
    if condition:
        step: nn.Module = (_ClassDiscreteStep if model.levels else _ClassContinuousStep)(net)
    else:
        step = (_DiscreteStep if model.levels else _ContinuousStep)(net)
    export_torch(step, inputs | labels, "state_next", directory / "sampler.onnx")
    return [
        GraphSpec(
            role="scorer",
            file="scorer.onnx",
            kind="log_prob",
            output="log_likelihood",
            condition=condition,
        ),
        GraphSpec(
            role="sampler",
            file="sampler.onnx",
            x_input=None,
            noise=noise,
            output="state_next",
            loop=StepLoop(steps=net.steps, state_dim=d),
            condition=condition,
        ),
    ]
