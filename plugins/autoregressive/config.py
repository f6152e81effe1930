"""The autoregressive family's options (`-o key=value`, with data-dependent presets) and its
trained-model record. Training, export and the family class import these; this module imports
none of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from registry.contract.dataset import Dataset
from registry.contract.family import FamilyConfig

# PixelCNN++ on colour images, chosen by measurement on this 2-core machine (benchmarks/colour.py
# --sizes, and 100 s of training each on patches-rgb at lr 2e-3): 32 channels x 2 blocks train
# 152 images/s and reached 3.49 validation bits/dim, where 48 x 3 (70/s) reached 3.80 and 64 x 3
# (48/s) 4.29. Within minutes on a CPU, more steps beat a wider network.
COLOUR_CHANNELS = 32
COLOUR_BLOCKS = 2


class ARConfig(FamilyConfig):
    """Options for `genreg train autoregressive -o key=value`; unset ones follow the data."""

    conditional: Literal["softmax", "logistic"] | None = Field(
        None, description="discrete data: softmax over the levels, or a discretised logistic mixture"
    )
    components: int = Field(
        10, ge=1, le=64, description="mixture components (logistic, or gaussian on continuous data)"
    )
    network: Literal["made", "conv"] | None = Field(
        None,
        description="made (masked MLP), or conv (image data only: masked convolutions on one channel, "
        "PixelCNN++ on colour)",
    )
    hidden: int | None = Field(None, ge=8, le=8192, description="made: width of the masked hidden layers")
    depth: int = Field(2, ge=1, le=8, description="made: masked hidden layers")
    channels: int | None = Field(None, ge=4, le=1024, description="conv: channels of the convolutions")
    layers: int | None = Field(
        None,
        ge=1,
        le=16,
        description="conv: residual masked 3x3 layers after the first 7x7 (one channel), or "
        "gated residual blocks per stream (PixelCNN++, colour)",
    )
    dropout: float | None = Field(None, ge=0, lt=1)
    lr: float | None = Field(None, gt=0, le=1, description="peak AdamW learning rate (cosine decay)")
    weight_decay: float | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1, le=65536)
    epochs: int | None = Field(None, ge=1, le=100000)
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement")
    grad_clip: float = Field(5.0, gt=0)

    def resolve(self, data: Dataset) -> ARConfig:
        """Fill unset options: small images overfit fast (dropout, weight decay, early
        stopping); 2-D toys have unlimited data and want large batches. Colour images
        (PixelCNN++) are many and large: one pass over patches-rgb is minutes on 2 cores, so
        they train without dropout, in small batches, for as long as the budget allows."""
        image = data.dim > 2
        colour = data.image_shape is not None and data.image_shape[2] > 1
        preset: dict[str, Any] = (
            {
                "network": "conv",
                "conditional": "logistic",
                "hidden": 1024,  # network=made, on request
                "channels": COLOUR_CHANNELS,
                "layers": COLOUR_BLOCKS,
                "dropout": 0.0,
                "weight_decay": 0.0,
                "batch_size": 32,
                "lr": 2e-3,
                "epochs": 300,
                "patience": 5,
            }
            if colour
            else {
                "network": "conv" if data.image_shape else "made",
                "conditional": "logistic",
                "hidden": 1024,
                "channels": 64,
                "layers": 4,
                "dropout": 0.5,
                "lr": 1e-3,
                "weight_decay": 1e-4,
                "batch_size": 64,
                "epochs": 300,
                "patience": 25,
            }
            if image
            else {
                "network": "made",
                "conditional": "softmax",
                "hidden": 256,
                "channels": 64,
                "layers": 4,
                "dropout": 0.0,
                "lr": 1e-3,
                "weight_decay": 0.0,
                "batch_size": 1024,
                "epochs": 300,
                "patience": 60,
            }
        )
        return self.with_defaults(preset)


@dataclass
class ARModel:
    config: ARConfig
    net: Any  # plugins.autoregressive.model.Autoregressive
    dim: int
    levels: int | None
    fit: dict[str, Any]
    image_shape: tuple[int, int, int] | None = None
    classes: int | None = None  # p(x|y) over these many class labels; None: p(x)
