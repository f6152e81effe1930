"""The GAN's ONNX graphs: sampler (z -> x) and discriminator (x -> logit); a conditional GAN's
take the label "y" too: (z, y) -> x and (x, y) -> logit."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from plugins.gan.config import GANModel
from registry.contract.family import Condition, GraphSpec, NoiseInput
from registry.pipeline.export import export_torch


class _Sampler(nn.Module):
    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator.sample(z)


class _ClassSampler(_Sampler):
    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.generator.sample(z, y)


class _Logit(nn.Module):
    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator.logit(x)


class _ClassLogit(_Logit):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.discriminator.logit(x, y)


def export_gan(model: GANModel, directory: Path) -> list[GraphSpec]:
    latent = model.config.latent
    classes = model.generator.classes
    condition = Condition(classes=classes) if classes else None
    sampler, logit = _Sampler(model.generator.eval()), _Logit(model.discriminator.eval())
    labels: dict[str, torch.Tensor] = {}
    if condition is not None:
        sampler, logit = _ClassSampler(model.generator), _ClassLogit(model.discriminator)
        labels = {"y": torch.arange(4, dtype=torch.int64)[:, None] % classes}
    export_torch(sampler, {"z": torch.randn(4, latent), **labels}, "x", directory / "sampler.onnx")
    export_torch(
        logit,
        {"x": torch.rand(4, model.dim), **labels},
        "logit",
        directory / "discriminator.onnx",
    )
    return [
        GraphSpec(
            role="sampler",
            file="sampler.onnx",
            x_input=None,
            noise=[NoiseInput(name="z", dist="normal", dim=latent)],
            output="x",
            condition=condition,
        ),
        GraphSpec(role="discriminator", file="discriminator.onnx", output="logit", condition=condition),
    ]
