"""The `vae` family: VAE / beta-VAE whose score is the ELBO (or, with k draws, the IWAE bound).

Whatever beta the model was trained with, its served bound uses beta = 1, so the number is a
true lower bound on log p(x). On discrete data the decoder is a per-pixel categorical over
the levels, so the bound is on the probability mass and its bits/dim compare with a flow's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from plugins.common.family import TorchFamily
from registry.data import Dataset
from registry.family import Capability, FamilyConfig, GraphSpec, TrainControl


class VAEConfig(FamilyConfig):
    beta: float = Field(1.0, ge=0, le=1000, description="weight of KL(q(z|x)||p(z)) in training")
    latent: int = Field(8, ge=1, le=512, description="latent dimensions")
    hidden: int = Field(256, ge=8, le=4096)
    depth: int = Field(2, ge=1, le=8)
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(64, ge=1, le=65536)
    epochs: int = Field(300, ge=1, le=100000)
    patience: int = Field(30, ge=1)
    grad_clip: float = Field(10.0, gt=0)


@dataclass
class VAEModel:
    config: VAEConfig
    vae: Any  # plugins.vae.model.VAE
    dim: int
    levels: int | None
    fit: dict[str, Any]


class VAEFamily(TorchFamily):
    name = "vae"
    description = "VAE / beta-VAE: Gaussian encoder, categorical or Gaussian decoder; ELBO and IWAE bounds"
    capabilities = frozenset({Capability.SAMPLE, Capability.BOUND})
    Config = VAEConfig

    def train(self, data: Dataset, config: VAEConfig, control: TrainControl) -> VAEModel:
        from plugins.vae.train import train_vae

        return train_vae(data, config, control)

    def sample(self, model: VAEModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        return self._run(model.vae.sample, noise["z"], noise["u"])

    def bound(self, model: VAEModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        # One importance draw: log p(x|z) + log p(z) - log q(z|x), the beta = 1 ELBO's integrand.
        def log_w(a, eps):
            rec, prior, post = model.vae.log_weight(a, eps)
            return rec + prior - post

        return self._run(log_w, x, noise["eps"])

    def reference(self, model: VAEModel, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        if spec.role == "encoder":
            return self._run(lambda a: torch.cat(model.vae.encode(a), -1), feeds["x"])
        if spec.role == "decoder":
            return self._run(model.vae.decode, feeds["z"])
        raise KeyError(spec.role)

    def export(self, model: VAEModel, directory: Path) -> list[GraphSpec]:
        from plugins.vae.export import export_vae

        return export_vae(model, directory)

    def weights(self, model: VAEModel) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in model.vae.state_dict().items()}
