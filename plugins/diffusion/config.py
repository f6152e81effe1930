"""The diffusion family's options (`-o key=value`, with data-dependent presets) and its
trained-model record. Training, export and the family class import these; this module imports
none of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from registry.contract.dataset import Dataset
from registry.contract.family import FamilyConfig


class DiffusionConfig(FamilyConfig):
    """Options for `genreg train diffusion -o key=value`; unset ones follow the data."""

    network: Literal["conv", "mlp"] | None = Field(
        None, description="conv (residual 3x3 convolutions; image data only) or mlp"
    )
    predict: Literal["levels", "epsilon"] = Field(
        "levels",
        description="discrete data: levels (a categorical with each dimension's own evidence) or epsilon "
        "(a plain noise prediction, for comparison)",
    )
    channels: int = Field(64, ge=8, le=1024, description="conv: channels (a multiple of 8)", multiple_of=8)
    blocks: int = Field(3, ge=1, le=16, description="conv: residual blocks of two 3x3 convolutions")
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
    strata: int = Field(4, ge=1, le=1000, description="training: stratified steps per row")
    score_strata: int = Field(
        20, ge=1, le=1000, description="the served scorer: stratified steps per row and draw (spread vs cost)"
    )
    lr: float = Field(2e-3, gt=0, le=1, description="peak AdamW learning rate (cosine decay)")
    weight_decay: float | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1, le=65536)
    epochs: int | None = Field(None, ge=1, le=100000)
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement")
    grad_clip: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _strata_divide_steps(self) -> DiffusionConfig:
        for name in ("strata", "score_strata"):
            if self.bound_steps % getattr(self, name):
                raise ValueError(f"bound_steps ({self.bound_steps}) must be a multiple of {name}")
        return self

    def resolve(self, data: Dataset) -> DiffusionConfig:
        """Fill unset options: convolutions on images (weight sharing generalises from ~1,250
        digits where an MLP overfits); an MLP with large batches on the 2-D toys."""
        image = data.dim > 2
        preset: dict[str, Any] = (
            {
                "network": "conv" if data.image_shape else "mlp",
                "hidden": 512,
                "dropout": 0.1,
                "weight_decay": 1e-4,
                "batch_size": 64,
                "epochs": 400,
                "patience": 30,
                "sample_steps": 100,
            }
            if image
            else {
                "network": "mlp",
                "hidden": 256,
                "dropout": 0.0,
                "weight_decay": 0.0,
                "batch_size": 512,
                "epochs": 400,
                "patience": 60,
                "sample_steps": 100,
            }
        )
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
