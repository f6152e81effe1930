"""The `vae` family: VAE / beta-VAE whose score is the ELBO (or, with k draws, the IWAE bound).

Whatever beta the model was trained with, its served bound uses beta = 1, so the number is a
true lower bound on log p(x). On discrete data the decoder is a distribution over the levels
(a categorical per value, or a discretised-logistic mixture on colour images and above 64
levels), so the bound is on the probability mass and its bits/dim compare with a flow's.

On labelled data it is a conditional VAE, q(z|x,y) and p(x|z,y) with the prior N(0, I): its
sampler and its scorer take the label, and each scorer draw is a log importance weight of
p(x|y), so the IWAE bound, the marginal over the classes and the Bayes classifier all come from
the one scorer. It claims no latent space (encode, decode): q(z|x,y) needs a label the latent
graphs and endpoints do not carry, and a z means nothing without its y.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plugins.common.family import TorchFamily
from plugins.vae.config import VAEConfig, VAEModel
from registry.contract.dataset import Dataset
from registry.contract.family import Capability, GraphSpec, TrainControl


class VAEFamily(TorchFamily):
    name = "vae"
    description = (
        "VAE / beta-VAE / beta-TCVAE: Gaussian encoder, categorical, discretised-logistic or "
        "Gaussian decoder (convolutional on colour images); ELBO and IWAE bounds"
    )
    capabilities = frozenset({Capability.SAMPLE, Capability.BOUND, Capability.ENCODE, Capability.DECODE})
    Config = VAEConfig
    data_parallel = True  # plugins.common.training.fit: DistributedDataParallel
    conditional = True  # p(x|y) on labelled data (plugins.vae.train)

    def train(self, data: Dataset, config: VAEConfig, control: TrainControl) -> VAEModel:
        from plugins.vae.train import train_vae

        return train_vae(data, config.resolve(data), control)

    def model_capabilities(self, model: VAEModel) -> set[Capability]:
        if model.vae.classes:
            return {Capability.SAMPLE, Capability.BOUND}  # no latent graphs: see the docstring
        return set(self.capabilities)

    def sample(self, model: VAEModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        if model.vae.classes:
            return self._run_labelled(model.vae.sample, noise["z"], noise["u"], noise["y"])
        return self._run(model.vae.sample, noise["z"], noise["u"])

    def bound(self, model: VAEModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        # One importance draw: log p(x|z) + log p(z) - log q(z|x), the beta = 1 ELBO's integrand
        # (given y: log p(x|z,y) + log p(z) - log q(z|x,y)).
        def log_w(a, eps, y=None):
            rec, prior, post = model.vae.log_weight(a, eps, y)
            return rec + prior - post

        if model.vae.classes:
            return self._run_labelled(log_w, x, noise["eps"], noise["y"])
        return self._run(log_w, x, noise["eps"])

    def reference(self, model: VAEModel, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        from plugins.vae.export import latent_functions

        return self._reference_of(latent_functions(model.vae), spec, feeds)

    def export(self, model: VAEModel, directory: Path) -> list[GraphSpec]:
        from plugins.vae.export import export_vae

        return export_vae(model, directory)

    def weights(self, model: VAEModel) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in model.vae.state_dict().items()}
