"""Fixture plugin: `box`, the uniform density on the training data's bounding box.

A complete third-party family in a few lines: exact log_prob, sampling and ONNX export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry import Capability, Family, FamilyConfig, GraphSpec, NoiseInput, hookimpl


class BoxConfig(FamilyConfig):
    margin: float = 0.0


@dataclass
class BoxModel:
    config: BoxConfig
    low: np.ndarray
    high: np.ndarray


class BoxFamily(Family):
    name = "box"
    description = "uniform on the bounding box of the data (fixture)"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB})
    Config = BoxConfig

    def train(self, data, config, control):
        return BoxModel(config, data.train.min(0) - config.margin, data.train.max(0) + config.margin + 1e-3)

    def sample(self, model, noise):
        return model.low + (model.high - model.low) * noise["u"]

    def log_prob(self, model, x, noise):
        inside = np.all((x >= model.low) & (x <= model.high), axis=1)
        return np.where(inside, -np.log(model.high - model.low).sum(), -np.inf)

    def export(self, model, directory: Path):
        import torch

        from registry.pipeline.export import export_torch

        low = torch.tensor(model.low, dtype=torch.float32)
        high = torch.tensor(model.high, dtype=torch.float32)

        class Sampler(torch.nn.Module):
            def forward(self, u):
                return low + (high - low) * u

        class Scorer(torch.nn.Module):
            def forward(self, x):
                inside = ((x >= low) & (x <= high)).all(1)
                value = -torch.log(high - low).sum()
                return torch.where(inside, value, torch.tensor(-float("inf")))

        d = len(model.low)
        export_torch(Sampler(), {"u": torch.rand(3, d)}, "x", directory / "sampler.onnx")
        export_torch(Scorer(), {"x": torch.rand(3, d)}, "log_likelihood", directory / "scorer.onnx")
        return [
            GraphSpec(
                role="sampler",
                file="sampler.onnx",
                x_input=None,
                noise=[NoiseInput(name="u", dist="uniform", dim=d)],
                output="x",
            ),
            GraphSpec(role="scorer", file="scorer.onnx", kind="log_prob", output="log_likelihood"),
        ]


@hookimpl
def register_families(register):
    register(BoxFamily)
