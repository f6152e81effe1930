"""The VAE's options (`-o key=value`) and its trained-model record.

Training, export and the family class all import these; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from registry.contract.family import FamilyConfig


class VAEConfig(FamilyConfig):
    beta: float = Field(1.0, ge=0, le=1000, description="weight of KL(q(z|x)||p(z)) in training")
    latent: int = Field(8, ge=1, le=512, description="latent dimensions")
    hidden: int = Field(256, ge=8, le=4096)
    depth: int = Field(2, ge=1, le=8)
    arch: Literal["mlp", "conv"] = Field(
        "mlp",
        description="conv: convolutional encoder and decoder (image data, height and width multiples of 4)",
    )
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
