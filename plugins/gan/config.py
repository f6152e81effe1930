"""The GAN's options (`-o key=value`) and its trained-model record.

Training, export and the family class all import these; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from registry.contract.family import FamilyConfig


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
