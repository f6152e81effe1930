"""The diffusion family's options (`-o key=value`, with data-dependent presets) and its
trained-model record. Training, export and the family class import these; this module imports
none of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from registry.contract.dataset import Dataset
from registry.contract.family import FamilyConfig

# Label dropout of a conditional diffusion: Ho & Salimans (2022, "Classifier-Free Diffusion
# Guidance") found 0.1 and 0.2 about equally good and 0.5 worse. The null class must be learned
# well enough to be subtracted at every guided step (and to be the unconditional model's bound),
# while each dropped row is one the conditional prediction does not see: 0.15 is the middle of
# that range (on 1,257 training digits, ~190 rows an epoch teach the null class).
P_UNCOND = 0.15


class DiffusionConfig(FamilyConfig):
    """Options for `genreg train diffusion -o key=value`; unset ones follow the data."""

    network: Literal["unet", "conv", "mlp"] | None = Field(
        None,
        description="unet (down- and up-sampling; images of 16x16 and up), conv (residual 3x3 "
        "convolutions at full resolution; images) or mlp",
    )
    predict: Literal["levels", "gaussian", "epsilon"] | None = Field(
        None,
        description="discrete data: levels (a categorical with each value's own evidence; up to 64 "
        "levels), gaussian (a Gaussian guess times that evidence, on the lattice; more levels) or "
        "epsilon (a plain noise prediction, for comparison)",
    )
    channels: int | None = Field(
        None, ge=8, le=1024, description="conv, unet: channels (at full resolution)", multiple_of=8
    )
    blocks: int | None = Field(
        None, ge=1, le=16, description="conv: residual blocks; unet: blocks per resolution"
    )
    mults: tuple[int, ...] | None = Field(
        None, description="unet: channels at each resolution, as multiples of channels (e.g. 1,2,2)"
    )
    hidden: int | None = Field(None, ge=8, le=8192, description="mlp: width of the hidden layers")
    depth: int = Field(3, ge=1, le=8, description="mlp: hidden layers")
    dropout: float | None = Field(None, ge=0, lt=1)
    gamma_min: float = Field(-13.3, ge=-30, le=0, description="gamma = -log SNR at t = 0 (least noise)")
    gamma_max: float = Field(5.0, ge=0, le=30, description="gamma = -log SNR at t = 1 (most noise)")
    bound_steps: int = Field(
        1000,
        ge=10,
        le=100000,
        description="T: the bound is on log P(x) of the T-step sampler; max /sample steps",
    )
    sample_steps: int | None = Field(None, ge=1, description="default /sample steps (at most bound_steps)")
    strata: int | None = Field(None, ge=1, le=1000, description="training: stratified steps per row")
    score_strata: int = Field(
        20, ge=1, le=1000, description="the served scorer: stratified steps per row and draw (spread vs cost)"
    )
    lr: float = Field(2e-3, gt=0, le=1, description="peak AdamW learning rate (cosine decay)")
    weight_decay: float | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1, le=65536)
    epochs: int | None = Field(None, ge=1, le=100000)
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement")
    grad_clip: float = Field(5.0, gt=0)

    p_uncond: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="labelled data: the share of training rows whose label is dropped to the null "
        "class, which guidance and the unconditional score need learned (default 0.15)",
    )

    patch: int | None = Field(
        None, ge=1, le=8, description="unet: p x p patches as channels (the body at 1/p resolution)"
    )

    @field_validator("mults", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("mults")
    @classmethod
    def _positive(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and not (1 <= len(value) <= 6 and all(1 <= m <= 16 for m in value)):
            raise ValueError("mults: 1 to 6 multiples, each 1 to 16")
        return value

    @model_validator(mode="after")
    def _strata_divide_steps(self) -> DiffusionConfig:
        for name in ("strata", "score_strata"):
            if getattr(self, name) is not None and self.bound_steps % getattr(self, name):
                raise ValueError(f"bound_steps ({self.bound_steps}) must be a multiple of {name}")
        return self

    def resolve(self, data: Dataset) -> DiffusionConfig:
        """Fill unset options by the data: convolutions on images (weight sharing generalises
        from ~1,250 digits where an MLP overfits); a U-Net on images of 16x16 and up, sized by
        measurement (benchmarks/colour.py --family diffusion --sizes); an MLP with large
        batches on the 2-D toys. The per-level categorical up to 64 levels, the Gaussian guess
        on the lattice above (256 levels: 256 outputs a value would not fit a batch)."""
        shape = data.image_shape
        predict = "epsilon" if not data.levels else "levels" if data.levels <= 64 else "gaussian"
        toy = {
            "network": "mlp",
            "hidden": 256,
            "dropout": 0.0,
            "weight_decay": 0.0,
            "batch_size": 512,
            "epochs": 400,
            "patience": 60,
        }
        small_image = {
            "network": "conv" if shape else "mlp",
            "channels": 64,
            "blocks": 3,
            "hidden": 512,
            "dropout": 0.1,
            "weight_decay": 1e-4,
            "batch_size": 64,
            "epochs": 400,
            "patience": 30,
        }
        # Measured on this machine (benchmarks/colour.py --family diffusion --sizes, and 150-s
        # runs on patches-rgb): a U-Net of 32, 64, 64 channels at 32, 16, 8 pixels, one block a
        # resolution, trains 136 images/s at batch 64; more steps beat more images a step
        # (batch 32: 2.95 validation bits/dim at 150 s, batch 64: 3.30), and one step a row
        # beats four (4x the images for the same work). Wider or deeper nets halve the rate.
        large_image = {
            "network": "unet",
            "channels": 32,
            "blocks": 1,
            "mults": (1, 2, 2),
            "dropout": 0.0,
            "weight_decay": 0.0,
            "batch_size": 32,
            "strata": 1,
            "epochs": 400,
            "patience": 5,
        }
        if data.dim <= 2:
            preset = toy
        elif shape and min(shape[0], shape[1]) >= 16:
            preset = large_image
        else:
            preset = small_image
        # Every option filled, whichever network is chosen (a network asked for explicitly
        # still finds its sizes).
        base = {"channels": 64, "blocks": 3, "mults": (1, 2, 2), "patch": 1, "hidden": 512, "strata": 4}
        preset = {**base, **preset, "predict": predict, "sample_steps": 100}
        if data.labels is not None:
            preset["p_uncond"] = P_UNCOND
        resolved = self.with_defaults(preset)
        if resolved.sample_steps > resolved.bound_steps:
            resolved = resolved.model_copy(update={"sample_steps": resolved.bound_steps})
        return resolved


@dataclass
class DiffusionModel:
    config: DiffusionConfig
    net: Any  # plugins.diffusion.model.Diffusion
    dim: int
    levels: int | None
    fit: dict[str, Any]
    image_shape: tuple[int, int, int] | None = None
    classes: int | None = None  # p(x|y) over this many labels (+ the null class); None: p(x)
