"""The VAE's options (`-o key=value`, with data-dependent presets) and its trained-model record.

Training, export and the family class all import these; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from registry.contract.dataset import Dataset
from registry.contract.family import FamilyConfig

# Above this many levels a softmax per value is too big a decoder (256 levels x 3,072 values is
# 786k logits a row at 32x32x3): the discretised logistic takes over.
CATEGORICAL_LEVELS = 64
# The architectures whose networks are convolutions over the image (image data only).
IMAGE_ARCHS = ("conv", "broadcast")


class VAEConfig(FamilyConfig):
    """Options for `genreg train vae -o key=value`; unset ones follow the data (see resolve)."""

    beta: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="weight in training of KL(q(z|x)||p(z)) (penalty=kl) or of q(z)'s total correlation (tc)",
    )
    penalty: Literal["kl", "tc"] = Field(
        "kl",
        description="what beta weighs: kl, the whole KL(q(z|x)||p(z)) (beta-VAE); tc, only the "
        "total correlation of the aggregate posterior q(z), the index-code information and the "
        "dimension-wise KL kept at weight 1 (beta-TCVAE, Chen et al. 2018)",
    )
    latent: int | None = Field(None, ge=1, le=1024, description="latent dimensions")
    hidden: int = Field(256, ge=8, le=4096, description="mlp: width of the dense layers")
    depth: int = Field(2, ge=1, le=8, description="mlp: hidden layers")
    arch: Literal["auto", "mlp", "conv", "broadcast"] = Field(
        "auto",
        description="mlp: dense layers over the flat row; conv: residual convolutions over the image "
        "(image data only); broadcast: conv's encoder, and a spatial-broadcast decoder (z tiled over "
        "the image beside coordinate planes, convolutions at full size; image data only); auto: conv "
        "on colour images, else mlp",
    )
    decoder: Literal["auto", "categorical", "logistic", "local", "gaussian"] = Field(
        "auto",
        description="p(x|z): categorical (a softmax over the levels per value), logistic (a "
        "discretised-logistic mixture per value), local (images: the logistic mixture with its "
        "location moved by the pixel's earlier channels and the left, upper and upper-left pixels; "
        "drawn in H+W-1 steps per channel), gaussian (continuous data); auto: local on colour "
        f"images, logistic above {CATEGORICAL_LEVELS} levels, categorical on other discrete data",
    )
    components: int = Field(1, ge=1, le=16, description="logistic: mixture components per value")
    channels: int | None = Field(None, ge=4, le=1024, description="conv: channels at full resolution")
    blocks: int | None = Field(None, ge=0, le=8, description="conv: residual blocks per resolution")
    lr: float | None = Field(None, gt=0, le=1)
    weight_decay: float | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1, le=65536)
    epochs: int | None = Field(None, ge=1, le=100000)
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement")
    grad_clip: float = Field(10.0, gt=0)

    def resolve(self, data: Dataset) -> VAEConfig:
        """Fill unset options from the data's kind.

        Digits, patches, shapes and 2-D toys keep the options they always had: an MLP, latent 8,
        batches of 64, lr 1e-3, weight decay 1e-4, early stopping after 30 epochs.

        Colour images (patches-rgb: 32x32x3 at 256 levels, 20,790 training patches): the conv
        network with a discretised-logistic decoder, sized by measurement on this 2-core machine,
        which other trainings shared (load 2 to 5.7, so the figures are rough):

        - step rate at batch 32, one thread: 32 channels and 1 residual block per resolution
          (0.75M parameters) 230 images/s; 0 blocks 451/s; 2 blocks 160/s; 48 channels 124/s; 64
          channels 77/s; 3 logistic components 169/s. Residual blocks at full size (the first
          version) ran at 25-80/s: none runs there now.
        - 90 s budgets (load ~2): validation ELBO 4.48 bits/dim with 1 block, 4.31 with 0, 4.85
          with 2; latent 128 4.82 against 4.48 at 64; 3 components 4.79; batch 64 at lr 2e-3 4.70.
        - one epoch each (equal images, load 3-5): 1 block 5.20, 0 blocks 5.80. Per image the
          block pays; the 90-s runs favour none only by seeing twice the images, and a 10-minute
          budget is many epochs, so the default keeps one.
        - the decoder, 150 s on one thread beside other training (test ELBO): independent
          logistics 5.547 bits/dim, the local decoder 3.592 (its coefficients unbounded: 3.958),
          PixelCNN++'s within-pixel coupling alone 5.071. PNG is 3.924.
        """
        colour = data.image_shape is not None and data.image_shape[2] > 1
        arch = self.arch if self.arch != "auto" else "conv" if colour else "mlp"
        if arch in IMAGE_ARCHS and data.image_shape is None:
            raise ValueError(f"arch={arch} needs image data; {data.name!r} has no image shape")
        decoder = self.decoder
        if decoder == "auto":
            many = data.levels is not None and data.levels > CATEGORICAL_LEVELS
            if not data.levels:
                decoder = "gaussian"
            else:
                decoder = "local" if colour else "logistic" if many else "categorical"
        if decoder == "local" and data.image_shape is None:
            raise ValueError(f"decoder=local needs image data; {data.name!r} has no image shape")
        if (decoder == "gaussian") != (not data.levels):
            raise ValueError(
                f"decoder={decoder} is for {'discrete' if decoder != 'gaussian' else 'continuous'} "
                f"data; {data.name!r} is {'discrete' if data.levels else 'continuous'}"
            )
        preset: dict[str, Any] = (
            {
                "latent": 64,
                "channels": 32,
                "blocks": 1,
                "lr": 1e-3,
                "weight_decay": 0.0,
                "batch_size": 32,
                "epochs": 300,
                "patience": 5,
            }
            if colour
            else {
                "latent": 8,
                "channels": 32,
                "blocks": 1,
                "lr": 1e-3,
                "weight_decay": 1e-4,
                "batch_size": 64,
                "epochs": 300,
                "patience": 30,
            }
        )
        return self.model_copy(update={"arch": arch, "decoder": decoder}).with_defaults(preset)


@dataclass
class VAEModel:
    config: VAEConfig
    vae: Any  # plugins.vae.model.VAE
    dim: int
    levels: int | None
    fit: dict[str, Any]
