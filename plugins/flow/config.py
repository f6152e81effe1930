"""The flow's options (`-o key=value`, with data-dependent presets) and its trained-model record.

Training, export and the family class all import these; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from registry.contract.dataset import Dataset
from registry.contract.family import FamilyConfig


class FlowConfig(FamilyConfig):
    """Options for `genreg train flow -o key=value`. Unset ones follow the data (see resolve)."""

    arch: Literal["auto", "mlp", "multiscale"] = Field(
        "auto",
        description="mlp: couplings on the flat row; multiscale: squeeze, convolutional couplings "
        "and factor-outs on the image (auto: multiscale on colour images, else mlp)",
    )
    scales: int | None = Field(None, ge=1, le=6, description="multiscale: squeezes (each halves h and w)")
    n_blocks: int | None = Field(None, ge=1, le=64, description="coupling blocks (multiscale: per scale)")
    hidden: int | None = Field(None, ge=8, le=4096, description="conditioner width (multiscale: channels)")
    depth: int = Field(2, ge=1, le=8, description="hidden layers per conditioner")
    dropout: float | None = Field(None, ge=0, lt=1, description="conditioner dropout")
    clamp: float | None = Field(None, gt=0, le=10, description="bound on each log-scale")
    alpha: float | None = Field(None, gt=0, lt=0.5, description="logit pre-processing constant")
    lr: float | None = Field(None, gt=0, le=1, description="peak AdamW learning rate (cosine decay)")
    weight_decay: float | None = Field(None, ge=0, description="AdamW weight decay")
    batch_size: int | None = Field(None, ge=1, le=65536)
    epochs: int | None = Field(None, ge=1, le=100000, description="max epochs")
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement")
    grad_clip: float = Field(5.0, gt=0)
    coupling: Literal["affine", "spline"] | None = Field(
        None, description="coupling transform: affine, or rational-quadratic spline"
    )
    bins: int = Field(8, ge=2, le=64, description="spline bins per dimension")
    tail_bound: float = Field(4.0, gt=0, le=100, description="splines act on [-tail_bound, tail_bound]")
    dequantization: Literal["uniform", "variational"] = Field(
        "uniform", description="discrete data: uniform noise, or a learned q(u|x) (Flow++)"
    )
    dequant_blocks: int = Field(4, ge=1, le=16, description="couplings in the variational q(u|x)")
    dequant_hidden: int = Field(128, ge=8, le=4096, description="width of q(u|x)'s networks")

    def resolve(self, data: Dataset) -> FlowConfig:
        """Fill unset options with defaults chosen for the data's kind.

        Images (about 1,250 digits, 64 dimensions: a flow overfits within a few dozen epochs):
        6 blocks of width 256 with dropout 0.3, weight decay 1e-3 and early stopping on
        validation. 2-D toys (unlimited data, many separated modes): 10 blocks of width 128,
        no regularisation, batches of 2,048 and a higher peak learning rate; the per-step cost
        is mostly overhead, so large batches buy accuracy almost for free.
        """
        colour = data.image_shape is not None and data.image_shape[2] > 1
        if self.arch == "multiscale" or (self.arch == "auto" and colour):
            return self._multiscale(data)
        image = data.dim > 2
        preset = (
            {
                "n_blocks": 6,
                "hidden": 256,
                "dropout": 0.3,
                "weight_decay": 1e-3,
                "batch_size": 64,
                "epochs": 150,
                "lr": 1e-3,
                "clamp": 2.0,
                "patience": 15,
                "coupling": "affine",
            }
            if image
            else {
                "n_blocks": 10,
                "hidden": 128,
                "dropout": 0.0,
                "weight_decay": 0.0,
                "batch_size": 2048,
                "epochs": 200,
                "lr": 3e-3,
                "clamp": 3.0,
                "patience": 40,
                "coupling": "spline",
            }
        )
        # Few levels (digits: 17, half the pixels at 0) put much of the mass in the edge bins,
        # which a small alpha leaves room for (the sweep: benchmarks/RESULTS.md, Dequantisation).
        preset["alpha"] = 0.001 if data.levels and data.levels <= 32 else 0.01
        return self.model_copy(update={"arch": "mlp"}).with_defaults(preset)

    def _multiscale(self, data: Dataset) -> FlowConfig:
        """Defaults on images: a Glow-style multi-scale flow.

        Sized by measurement on patches-rgb (32x32x3, 20,790 training patches) on this 2-core
        machine, where a 10-minute budget is a few epochs: 3 scales of 4 steps with 64-channel
        conditioners (see benchmarks/RESULTS.md, "Flow, VAE and GAN at image scale"). No dropout
        or weight decay: at this budget the flow underfits, it does not overfit.
        """
        from plugins.flow.multiscale import max_scales

        if data.image_shape is None:
            raise ValueError(f"arch=multiscale needs image data; {data.name!r} has no image shape")
        most = max_scales(data.image_shape)
        if most == 0:
            raise ValueError(
                f"arch=multiscale needs an even height and width; {data.name!r} is "
                f"{data.image_shape[0]}x{data.image_shape[1]}"
            )
        if self.scales is not None and self.scales > most:
            raise ValueError(f"scales={self.scales}: a {data.name!r} image can be squeezed {most} times")
        preset = {
            "scales": min(3, most),
            "n_blocks": 4,
            "hidden": 64,
            "dropout": 0.0,
            "weight_decay": 0.0,
            "batch_size": 32,
            "epochs": 200,
            "lr": 1e-3,
            "clamp": 2.0,
            "patience": 20,
            "coupling": "affine",
            "alpha": 0.001 if data.levels and data.levels <= 32 else 0.01,
        }
        return self.model_copy(update={"arch": "multiscale"}).with_defaults(preset)


@dataclass
class FlowModel:
    config: FlowConfig
    flow: Any  # plugins.flow.model.Flow
    dim: int
    levels: int | None
    fit: dict[str, Any]
    dequantizer: Any = None  # plugins.flow.dequantize.VariationalDequantizer, when variational
    classes: int | None = None  # p(x|y) over these many class labels; None: p(x)
