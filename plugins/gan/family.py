"""The `gan` family: samples and a discriminator, no likelihood.

Trained on min_G max_D E_pi log D(x) + E_z log(1 - D(G(z))); the generator's loss is the
non-saturating -log D(G(z)) by default, or the minimax log(1 - D(G(z))) with -o loss=minimax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from plugins.common.family import TorchFamily
from registry.data import Dataset
from registry.family import Capability, FamilyConfig, GraphSpec, TrainControl


class GANConfig(FamilyConfig):
    loss: Literal["non-saturating", "minimax"] = Field("non-saturating", description="generator loss")
    latent: int = Field(16, ge=1, le=512)
    hidden: int = Field(256, ge=8, le=4096)
    depth: int = Field(3, ge=1, le=8)
    lr: float = Field(2e-4, gt=0, le=1)
    batch_size: int | None = Field(None, ge=2, le=65536, description="default: 64 (images), 256 (2-D)")
    epochs: int | None = Field(None, ge=1, le=100000, description="default: 300 (images), 60 (2-D)")
    d_steps: int = Field(1, ge=1, le=10, description="discriminator steps per generator step")
    eval_every: int = Field(5, ge=1, description="epochs between validation MMD checks")


@dataclass
class GANModel:
    config: GANConfig
    generator: Any
    discriminator: Any
    dim: int
    levels: int | None
    fit: dict[str, Any]


class GANFamily(TorchFamily):
    name = "gan"
    description = "GAN: MLP generator and discriminator, non-saturating or minimax generator loss"
    capabilities = frozenset({Capability.SAMPLE, Capability.DISCRIMINATE})
    Config = GANConfig

    def train(self, data: Dataset, config: GANConfig, control: TrainControl) -> GANModel:
        from plugins.gan.train import train_gan

        return train_gan(data, config, control)

    def sample(self, model: GANModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        return self._run(model.generator.sample, noise["z"])

    def discriminate(self, model: GANModel, x: np.ndarray) -> np.ndarray:
        return self._run(model.discriminator.logit, x)

    def export(self, model: GANModel, directory: Path) -> list[GraphSpec]:
        from plugins.gan.export import export_gan

        return export_gan(model, directory)

    def weights(self, model: GANModel) -> dict[str, np.ndarray]:
        out = {f"generator.{k}": v.numpy() for k, v in model.generator.state_dict().items()}
        out.update({f"discriminator.{k}": v.numpy() for k, v in model.discriminator.state_dict().items()})
        return out
