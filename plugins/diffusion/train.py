"""Training the diffusion model: minimise the T-step variational bound (in bits/dim), early-stopped
on the validation bound estimated with fixed noise."""

from __future__ import annotations

import math

import torch

from plugins.common.memory import check_fits, estimate_bytes
from plugins.common.training import fit_config, pick_device
from plugins.diffusion.config import DiffusionConfig, DiffusionModel
from plugins.diffusion.model import ConvDenoiser, MLPDenoiser, UNetDenoiser
from plugins.diffusion.process import Diffusion
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl
from registry.runtime.images import image_shape

# Validation runs the denoiser on rows x strata inputs, counted here in values (x the row's
# width): at most EVAL_VALUES at once (a 32x32x3 U-Net on 1,024 rows x 20 strata at once took
# 15 GB), and at most VAL_VALUES per validation, so that choosing the best epoch stays a small
# part of an epoch. Digits (270 x 20 x 64), patches and the 2-D toys fit both whole.
EVAL_VALUES = 2**20
VAL_VALUES = 2**23


def validation_strata(rows: int, dim: int, config: DiffusionConfig) -> int:
    """The validation's strata per row: the served scorer's, fewer where rows x strata x dim would
    pass VAL_VALUES (a divisor of T, so that the strata stay equal)."""
    fitting = [
        m
        for m in range(1, config.score_strata + 1)
        if config.bound_steps % m == 0 and rows * m * dim <= VAL_VALUES
    ]
    return max(fitting, default=1)


def build(
    dim: int, levels: int | None, config: DiffusionConfig, shape: tuple[int, ...] | None = None
) -> Diffusion:
    shape = image_shape(shape)  # (h, w), as stored before channels, is one channel
    out = {"levels": levels, "gaussian": 2}.get(config.predict, 1) if levels else 1
    if config.network in ("conv", "unet") and shape is None:
        raise ValueError(f"network={config.network} needs image data (an image shape); use network=mlp")
    if config.network == "unet":
        network = UNetDenoiser(
            shape, out, config.channels, config.mults, config.blocks, config.dropout, patch=config.patch
        )
    elif config.network == "conv":
        network = ConvDenoiser(shape, out, config.channels, config.blocks, config.dropout)
    else:
        network = MLPDenoiser(dim, out, config.hidden, config.depth, config.dropout)
    return Diffusion(
        network, dim, levels, config.gamma_min, config.gamma_max, config.bound_steps, config.predict
    )


def draws(n: int, dim: int, strata: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The scorer's noise for n rows: (u, eps, eps0), as the exported graph takes it."""
    u = torch.rand(n, strata, generator=generator)
    eps = torch.randn(n, strata * dim, generator=generator)
    eps0 = torch.randn(n, dim, generator=generator)
    return u, eps, eps0


def train_diffusion(data: Dataset, config: DiffusionConfig, control: TrainControl) -> DiffusionModel:
    def meta_loss(net: Diffusion, x: torch.Tensor) -> torch.Tensor:
        shapes = [t.shape[1:] for t in draws(1, data.dim, config.strata, torch.Generator())]
        return net.bound(x, *(torch.zeros(len(x), *s, device="meta") for s in shapes)).mean()

    check_fits(
        f"diffusion (network={config.network}) on {data.dim}-value rows",
        estimate_bytes(
            lambda: build(data.dim, data.levels, config, data.image_shape),
            meta_loss,
            data.dim,
            config.batch_size,
            data_rows=len(data.train) + len(data.validation),
            # the evaluation's chunk, in training rows (each of which runs `strata` passes)
            eval_rows=-(-EVAL_VALUES // (data.dim * config.strata)),
        ),
    )
    device = pick_device(control)
    torch.manual_seed(control.seed)
    net = build(data.dim, data.levels, config, data.image_shape)
    train = torch.as_tensor(data.train, dtype=torch.float32)
    if not data.levels:
        net.mean.copy_(train.mean(0))
        net.std.copy_(train.std(0) + 1e-3)
    net.to(device)
    train = train.to(device)
    val = torch.as_tensor(data.validation, dtype=torch.float32, device=device)
    nats_to_bpd = 1.0 / (data.dim * math.log(2))
    # Fixed noise: the estimate that picks the best epoch moves with the model, not the draw.
    val_strata = validation_strata(len(val), data.dim, config)
    chunk = max(1, EVAL_VALUES // (val_strata * data.dim))
    val_noise = [
        t.to(device)
        for t in draws(len(val), data.dim, val_strata, torch.Generator().manual_seed(control.seed + 1))
    ]

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = [t.to(device) for t in draws(len(batch), data.dim, config.strata, generator)]
        return -net.bound(batch, *noise).mean() * nats_to_bpd

    def validate() -> float:
        with torch.no_grad():
            out = [
                net.bound(val[i : i + chunk], *(t[i : i + chunk] for t in val_noise))
                for i in range(0, len(val), chunk)
            ]
            return float(-torch.cat(out).mean() * nats_to_bpd)

    result = fit_config(net, train, config, loss_fn=loss_fn, validate=validate, control=control)
    net.cpu().eval()
    return DiffusionModel(
        config, net, data.dim, data.levels, fit=result.__dict__, image_shape=data.image_shape
    )
