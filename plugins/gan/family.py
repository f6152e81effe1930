"""The `gan` family: samples and a discriminator, no likelihood.

Trained on min_G max_D E_pi log D(x) + E_z log(1 - D(G(z))); the generator's loss is the
non-saturating -log D(G(z)) by default, or the minimax log(1 - D(G(z))) with -o loss=minimax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plugins.common.family import TorchFamily
from plugins.gan.config import GANConfig, GANModel
from registry.contract.dataset import Dataset
from registry.contract.family import Capability, GraphSpec, TrainControl


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
