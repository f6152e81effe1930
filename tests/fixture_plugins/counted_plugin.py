"""Fixture plugin: `counted`, a diagonal Gaussian whose step sampler takes its step count.

The sampler is a step loop with a count input, as a diffusion model's is: each of the T steps
adds sigma * z_t / sqrt(T) to the state, and the last one adds the mean, so after any count
T the sample is exactly N(mean, sigma^2) and a seed gives different samples for different
counts (``sampler=False``: a model that only scores). ``log_prob`` is exact. Its ``bound`` scorer draws, per row, either

- ``estimates="average"``: log p(x) - 1 + 2 e (e ~ N(0, 1)), an unbiased estimate of the bound
  log p(x) - 1 but no log importance weight (E[exp] = e p(x) > p(x)): log mean exp over its
  draws is no bound, so the graph supports the average only, as a diffusion loss does; or
- ``estimates="both"``: log p(x) + e - 1/2, a log importance weight (E[exp] = p(x)), for
  which both the average and log mean exp are bounds, as a VAE's are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from registry import Capability, DataError, Family, FamilyConfig, GraphSpec, NoiseInput, StepLoop, hookimpl


class CountedConfig(FamilyConfig):
    steps: int = 4  # the sampler's own count
    max_steps: int = 16
    estimates: Literal["average", "both"] = "average"
    sampler: bool = True  # False: a model that only scores


@dataclass
class CountedModel:
    config: CountedConfig
    mean: np.ndarray
    sigma: np.ndarray


class CountedFamily(Family):
    name = "counted"
    description = "Gaussian sampled in a chosen number of steps; an average-only bound (fixture)"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB, Capability.BOUND})
    Config = CountedConfig

    def train(self, data, config, control):
        if data.discrete:
            raise DataError("counted needs continuous data")
        return CountedModel(config, data.train.mean(0), data.train.std(0) + 1e-3)

    def model_capabilities(self, model):
        return set(self.capabilities) - (set() if model.config.sampler else {Capability.SAMPLE})

    def log_prob(self, model, x, noise):
        z = (x - model.mean) / model.sigma
        return -0.5 * (z**2).sum(1) - np.log(model.sigma).sum() - 0.5 * x.shape[1] * math.log(2 * math.pi)

    def bound(self, model, x, noise):
        e = noise["e"][:, 0]
        if model.config.estimates == "average":
            return self.log_prob(model, x, noise) - 1.0 + 2.0 * e
        return self.log_prob(model, x, noise) + e - 0.5

    def sample(self, model, noise):
        z = noise["z"]  # (T, n, D)
        state = np.zeros(z.shape[1:])
        for t in range(len(z)):
            state = state + model.sigma * z[t] / math.sqrt(len(z))
        return state + model.mean

    def export(self, model, directory: Path):
        import torch

        from registry.pipeline.export import export_torch

        mean = torch.tensor(model.mean, dtype=torch.float32)
        sigma = torch.tensor(model.sigma, dtype=torch.float32)
        dim = len(model.mean)
        log_norm = float(np.log(model.sigma).sum() + 0.5 * dim * math.log(2 * math.pi))
        average = model.config.estimates == "average"

        class Step(torch.nn.Module):
            def forward(self, state, step, count, z):
                last = (step == count - 1).to(state.dtype)  # (n, 1): the mean joins at the end
                return state + sigma * z / torch.sqrt(count.to(state.dtype)) + last * mean

        def log_p(x):
            return -0.5 * (((x - mean) / sigma) ** 2).sum(1) - log_norm

        class LogProb(torch.nn.Module):
            def forward(self, x):
                return log_p(x)

        class Bound(torch.nn.Module):
            def forward(self, x, e):
                return log_p(x) + (2.0 * e[:, 0] - 1.0 if average else e[:, 0] - 0.5)

        int_column = torch.zeros(3, 1, dtype=torch.int64)
        step_inputs = {"state": torch.zeros(3, dim), "step": int_column, "count": int_column + 1}
        export_torch(Step(), {**step_inputs, "z": torch.zeros(3, dim)}, "next", directory / "sampler.onnx")
        export_torch(LogProb(), {"x": torch.zeros(3, dim)}, "log_p", directory / "log_prob.onnx")
        export_torch(
            Bound(), {"x": torch.zeros(3, dim), "e": torch.zeros(3, 1)}, "bound", directory / "bound.onnx"
        )
        config = model.config
        sampler = [
            GraphSpec(
                role="sampler",
                file="sampler.onnx",
                x_input=None,
                noise=[NoiseInput(name="z", dist="normal", dim=dim)],
                output="next",
                loop=StepLoop(
                    steps=config.steps,
                    state_dim=dim,
                    count_input="count",
                    max_steps=config.max_steps,
                ),
            )
        ]
        return [
            *(sampler if config.sampler else []),
            GraphSpec(role="scorer", file="log_prob.onnx", kind="log_prob", output="log_p"),
            GraphSpec(
                role="scorer",
                file="bound.onnx",
                kind="bound",
                noise=[NoiseInput(name="e", dist="normal", dim=1)],
                output="bound",
                estimates=["average"] if average else ["average", "importance_weighted"],
            ),
        ]


@hookimpl
def register_families(register):
    register(CountedFamily)
