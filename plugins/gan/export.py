"""The GAN's ONNX graphs: sampler (z -> x) and discriminator (x -> logit)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from plugins.gan.config import GANModel
from registry.contract.family import GraphSpec, NoiseInput
from registry.pipeline.export import export_torch


class _Sampler(nn.Module):
    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator.sample(z)


class _Logit(nn.Module):
    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator.logit(x)


def export_gan(model: GANModel, directory: Path) -> list[GraphSpec]:
    latent = model.config.latent
    export_torch(
        _Sampler(model.generator.eval()), {"z": torch.randn(4, latent)}, "x", directory / "sampler.onnx"
    )
    export_torch(
        _Logit(model.discriminator.eval()),
        {"x": torch.rand(4, model.dim)},
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
        ),
        GraphSpec(role="discriminator", file="discriminator.onnx", output="logit"),
    ]
