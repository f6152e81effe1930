"""The diffusion model's ONNX graphs: the scorer (x and its noise -> one unbiased estimate of the
bound) and the sampler's step (state, step, step count, noise -> state), which the serving
runtime applies as many times as a request asks, up to the bound's T.

A conditional model's graphs also take the label "y" ((n, 1) int64; K, the null class, is the
unconditional model), and its step the guidance scale "guidance" ((n, 1) float32):
classifier-free guidance, eps(x, null) + w (eps(x, y) - eps(x, null)), in one network call."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from plugins.diffusion.config import DiffusionModel
from registry.contract.family import Condition, GraphSpec, NoiseInput, StepLoop
from registry.pipeline.export import export_torch

GUIDANCE = "guidance"  # the guided step's scale input


class _Bound(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, x: torch.Tensor, u: torch.Tensor, eps: torch.Tensor, eps0: torch.Tensor
    ) -> torch.Tensor:
        return self.net.bound(x, u, eps, eps0)


class _ClassBound(_Bound):
    """The bound on log P(x|y) (y = K: the unconditional model's)."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, u: torch.Tensor, eps: torch.Tensor, eps0: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return self.net.bound(x, u, eps, eps0, y)


class _Step(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        state: torch.Tensor,
        step: torch.Tensor,
        steps: torch.Tensor,
        eps: torch.Tensor,
        z1: torch.Tensor,
        dec: torch.Tensor,
    ) -> torch.Tensor:
        return self.net.step(state, step, steps, eps, z1, dec)


class _GuidedStep(_Step):
    """A step of the guided sampler: label y, scale w (0: unconditional, 1: conditional)."""

    def forward(  # type: ignore[override]
        self,
        state: torch.Tensor,
        step: torch.Tensor,
        steps: torch.Tensor,
        eps: torch.Tensor,
        z1: torch.Tensor,
        dec: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        return self.net.step(state, step, steps, eps, z1, dec, y, guidance)


def scorer_noise(model: DiffusionModel) -> list[NoiseInput]:
    m, d = model.config.score_strata, model.dim
    return [
        NoiseInput(name="u", dist="uniform", dim=m),
        NoiseInput(name="eps", dist="normal", dim=m * d),
        NoiseInput(name="eps0", dist="normal", dim=d),
    ]


def sampler_noise(model: DiffusionModel) -> list[NoiseInput]:
    d = model.dim
    # Every step draws all three (the runtime's noise is per step): eps moves z_t to z_s, z1 is
    # z_1 at step 0, dec the decoder's draw at the last step.
    return [NoiseInput(name=name, dist="normal", dim=d) for name in ("eps", "z1", "dec")]


def conditions(model: DiffusionModel) -> tuple[Condition | None, Condition | None]:
    """(the scorer's, the sampler's) condition: labels 0..K with the null class K (trained by
    label dropout), and the sampler's guidance scale; (None, None) for an unconditional model."""
    if not model.classes:
        return None, None
    scorer = Condition(classes=model.classes, null=True)
    return scorer, scorer.model_copy(update={"guidance": GUIDANCE})


def export_diffusion(model: DiffusionModel, directory: Path) -> list[GraphSpec]:
    net = model.net.eval()
    d, m = model.dim, model.config.score_strata
    x = torch.zeros(4, d)
    scorer_condition, sampler_condition = conditions(model)
    labels: dict[str, torch.Tensor] = {}
    guided: dict[str, torch.Tensor] = {}
    if scorer_condition is not None:
        labels = {"y": torch.zeros(4, 1, dtype=torch.int64)}
        guided = {GUIDANCE: torch.ones(4, 1)}
    scorer_inputs = {
        "x": x,
        "u": torch.rand(4, m),
        "eps": torch.randn(4, m * d),
        "eps0": torch.randn(4, d),
        **labels,
    }
    scorer = _ClassBound(net) if labels else _Bound(net)
    export_torch(scorer, scorer_inputs, "bound", directory / "scorer.onnx")
    step_inputs = {
        "state": x,
        "step": torch.zeros(4, 1, dtype=torch.int64),
        "steps": torch.full((4, 1), 2, dtype=torch.int64),
        "eps": torch.randn(4, d),
        "z1": torch.randn(4, d),
        "dec": torch.randn(4, d),
        **labels,
        **guided,
    }
    step = _GuidedStep(net) if labels else _Step(net)
    export_torch(step, step_inputs, "state_next", directory / "sampler.onnx")
    return [
        GraphSpec(
            role="scorer",
            file="scorer.onnx",
            kind="bound",
            noise=scorer_noise(model),
            output="bound",
            # One draw is an unbiased estimate of the bound at random steps, not a log importance
            # weight: E[exp(draw)] can exceed P(x), so log mean exp over draws is no bound.
            estimates=["average"],
            condition=scorer_condition,
        ),
        GraphSpec(
            role="sampler",
            file="sampler.onnx",
            x_input=None,
            noise=sampler_noise(model),
            output="state_next",
            loop=StepLoop(
                steps=model.config.sample_steps,
                state_dim=d,
                count_input="steps",
                max_steps=model.config.bound_steps,
            ),
            condition=sampler_condition,
        ),
    ]
