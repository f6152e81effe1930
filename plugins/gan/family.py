"""The `gan` family: samples and a discriminator, no likelihood.

Trained on min_G max_D E_pi log D(x) + E_z log(1 - D(G(z))); the generator's loss is the
non-saturating -log D(G(z)) by default, or the minimax log(1 - D(G(z))) with -o loss=minimax.

On labelled data it is a conditional GAN, G(z, y) against a projection discriminator D(x, y),
trained on the same objective given the label: its sampler and its discriminator take "y".

On colour images G and D are DCGAN's convolutions (arch=conv, plugins.gan.model); elsewhere MLPs.
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
    description = (
        "GAN: MLP or DCGAN (colour images) generator and discriminator, non-saturating or minimax "
        "generator loss"
    )
    capabilities = frozenset({Capability.SAMPLE, Capability.DISCRIMINATE})
    Config = GANConfig
    conditional = True  # G(z, y) and D(x, y) on labelled data (plugins.gan.train)

    def train(self, data: Dataset, config: GANConfig, control: TrainControl) -> GANModel:
        from plugins.gan.train import train_gan

        return train_gan(data, config.resolve(data), control)

    def sample(self, model: GANModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        if model.generator.classes:
            return self._run_labelled(model.generator.sample, noise["z"], noise["y"])
        return self._run(model.generator.sample, noise["z"])

    def discriminate(
        self, model: GANModel, x: np.ndarray, condition: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        if model.discriminator.classes:
            if condition is None:
                raise ValueError("a conditional GAN's discriminator needs the rows' labels")
            return self._run_labelled(model.discriminator.logit, x, condition["y"])
        return self._run(model.discriminator.logit, x)

    def export(self, model: GANModel, directory: Path) -> list[GraphSpec]:
        from plugins.gan.export import export_gan

        return export_gan(model, directory)

    def weights(self, model: GANModel) -> dict[str, np.ndarray]:
        out = {f"generator.{k}": v.numpy() for k, v in model.generator.state_dict().items()}
        out.update({f"discriminator.{k}": v.numpy() for k, v in model.discriminator.state_dict().items()})
        return out
