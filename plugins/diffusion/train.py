"""Training the diffusion model: minimise the T-step variational bound (in bits/dim), early-stopped
on the validation bound estimated with fixed noise."""

from __future__ import annotations

import math

import torch

from plugins.common.memory import check_fits, estimate_bytes
from plugins.common.training import fit_config, pick_device
from plugins.diffusion.config import DiffusionConfig, DiffusionModel
from plugins.diffusion.model import ConvDenoiser, Diffusion, MLPDenoiser
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl
from registry.runtime.images import image_shape

EVAL_ROWS = 1024  # validation rows bounded at once


def build(
    dim: int, levels: int | None, config: DiffusionConfig, shape: tuple[int, ...] | None = None
) -> Diffusion:
    shape = image_shape(shape)  # (h, w), as stored before channels, is one channel
    out = levels if levels and config.predict == "levels" else 1
    if config.network == "conv":
        if shape is None:
            raise ValueError("network=conv needs image data (an image shape); use network=mlp")
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
            eval_rows=min(EVAL_ROWS, len(data.validation)),
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
    val_noise = [
        t.to(device)
        # The served scorer's strata (a divisor of T): the estimate that picks the best epoch
        # should move with the model, not with the draw.
        for t in draws(
            len(val), data.dim, config.score_strata, torch.Generator().manual_seed(control.seed + 1)
        )
    ]

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = [t.to(device) for t in draws(len(batch), data.dim, config.strata, generator)]
        return -net.bound(batch, *noise).mean() * nats_to_bpd

    def validate() -> float:
        with torch.no_grad():
            out = [
                net.bound(val[i : i + EVAL_ROWS], *(t[i : i + EVAL_ROWS] for t in val_noise))
                for i in range(0, len(val), EVAL_ROWS)
            ]
            return float(-torch.cat(out).mean() * nats_to_bpd)

    result = fit_config(net, train, config, loss_fn=loss_fn, validate=validate, control=control)
    net.cpu().eval()
    return DiffusionModel(
        config, net, data.dim, data.levels, fit=result.__dict__, image_shape=data.image_shape
    )
