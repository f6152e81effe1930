"""The GAN's options (`-o key=value`, with data-dependent presets) and its trained-model record.

Training, export and the family class all import these; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from registry.contract.dataset import Dataset
from registry.contract.family import FamilyConfig

# DCGAN on colour images, sized by measurement on this 2-core machine (patches-rgb, batch 64, two
# torch threads, idle): training steps ran at 900-950 images/s at 32 channels, 480 at 48 and 330
# at 64 (the usual DCGAN width for 32x32: G 256-128-64), so 10 minutes are ~8,000 generator steps
# at 32 against ~3,000 at 64. At the step counts of 2 minutes (1,625 / 975 / 650 steps) the three
# reached the same quality (test k-NN C2ST 0.91 / 0.90 / 0.89, MMD^2 0.18 / 0.17 / 0.13): the
# narrowest, with the most steps a budget buys, is the default. A 120-s `genreg train gan --data
# patches-rgb` with these defaults (load average 1.6-1.9 of 2 cores): 971 images/s, 1,805 steps,
# stored test C2ST 0.854, MMD^2 0.133, JSD bound 0.138 nats (a run before a last bias change:
# 0.901, 0.175, 0.219 at 2,009 steps; the MLP GAN in 120 s, 5,200 steps: 0.901, 0.176, 0.200,
# with per-pixel noise where DCGAN draws smooth regions: k-NN C2ST over pixels sees colours more
# than structure).
COLOUR_CHANNELS = 32
COLOUR_LATENT = 64
# Validation (500 samples and their MMD^2: 0.2 s) every 200 steps, ~13 s of training at 32 channels.
COLOUR_EVAL_STEPS = 200


class GANConfig(FamilyConfig):
    """Options for `genreg train gan -o key=value`; unset ones follow the data (see resolve)."""

    arch: Literal["auto", "mlp", "conv"] = Field(
        "auto",
        description="mlp: dense layers over the flat row; conv: DCGAN's strided convolutions over the "
        "image (image data, height and width divisible by 4); auto: conv on colour images, else mlp",
    )
    loss: Literal["non-saturating", "minimax"] = Field("non-saturating", description="generator loss")
    latent: int | None = Field(None, ge=1, le=512, description="default: 16 (mlp), 64 (conv)")
    hidden: int = Field(256, ge=8, le=4096, description="mlp: width of the dense layers")
    depth: int = Field(3, ge=1, le=8, description="mlp: hidden layers")
    channels: int | None = Field(
        None, ge=4, le=1024, description="conv: D's channels at half the image's size (doubling per halving)"
    )
    d_norm: Literal["spectral", "batch"] = Field(
        "spectral",
        description="conv: the discriminator's normalisation after its first layer; batch trains "
        "closer samples but serves a discriminator unlike the trained one (see resolve)",
    )
    lr: float = Field(2e-4, gt=0, le=1)
    batch_size: int | None = Field(None, ge=2, le=65536, description="default: 64 (images), 256 (2-D)")
    epochs: int | None = Field(None, ge=1, le=100000, description="default: 300 (images), 60 (2-D)")
    d_steps: int = Field(1, ge=1, le=10, description="discriminator steps per generator step")
    eval_every: int = Field(5, ge=1, description="epochs between validation MMD checks")
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="generator steps between validation MMD checks, in place of eval_every "
        f"(default: none; {COLOUR_EVAL_STEPS} on colour images, whose epochs are minutes long)",
    )

    def resolve(self, data: Dataset) -> GANConfig:
        """Fill unset options from the data's kind.

        Digits, patches, shapes and 2-D toys keep the options they always had: the MLPs, latent
        16, validation every 5 epochs. Colour images get DCGAN (arch=conv) at the sizes measured
        above, validated every COLOUR_EVAL_STEPS steps (an epoch of patches-rgb is 325 steps).

        The discriminator's norm is spectral (d_norm): with BatchNorm instead (measured at 1,625
        steps, 32 channels) the samples were closer (C2ST 0.837, MMD^2 0.098, against 0.909 and
        0.181) but the served discriminator, in eval mode, is not the one that trained: its JSD
        bound on the test rows was 0 (0.218 with spectral norm), also when each D step saw real
        and fake rows in one batch (C2ST 0.917, MMD^2 0.287). BatchNorm stays an option for
        samples alone.
        """
        colour = data.image_shape is not None and data.image_shape[2] > 1
        arch = self.arch if self.arch != "auto" else "conv" if colour else "mlp"
        if arch == "conv" and data.image_shape is None:
            raise ValueError(f"arch=conv needs image data; {data.name!r} has no image shape")
        if arch == "conv":
            h, w, _ = data.image_shape
            if h % 4 or w % 4:
                raise ValueError(
                    f"arch=conv needs a height and width divisible by 4; {data.name!r} is {h}x{w}"
                )
        preset: dict[str, Any] = {"latent": 16}
        if arch == "conv":
            preset = {"latent": COLOUR_LATENT, "channels": COLOUR_CHANNELS}
            if colour:
                preset["eval_steps"] = COLOUR_EVAL_STEPS
        return self.model_copy(update={"arch": arch}).with_defaults(preset)


@dataclass
class GANModel:
    config: GANConfig
    generator: Any
    discriminator: Any
    dim: int
    levels: int | None
    fit: dict[str, Any]
    image_shape: tuple[int, int, int] | None = None
