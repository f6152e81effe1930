"""Training the diffusion model: minimise the T-step variational bound (in bits/dim), early-stopped
on the validation bound estimated with fixed noise.

On labelled data it is the bound on log P(x|y), with label dropout: each training row's label is
replaced by the null class with probability ``p_uncond``, so the one network learns the
conditional and the unconditional noise prediction (classifier-free guidance). The labels
travel as one more column of the training tensor, split off in the loss, so that the shared
loop (and its data-parallel split of each batch) keeps each row's label with it."""

from __future__ import annotations

import math

import torch

from plugins.common.memory import check_fits, estimate_bytes
from plugins.common.training import fit_config, pick_device, split_labels, with_labels
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
    dim: int,
    levels: int | None,
    config: DiffusionConfig,
    shape: tuple[int, ...] | None = None,
    classes: int | None = None,
) -> Diffusion:
    shape = image_shape(shape)  # (h, w), as stored before channels, is one channel
    out = {"levels": levels, "gaussian": 2}.get(config.predict, 1) if levels else 1
    if config.network in ("conv", "unet") and shape is None:
        raise ValueError(f"network={config.network} needs image data (an image shape); use network=mlp")
    if config.network == "unet":
        network = UNetDenoiser(
            shape,
            out,
            config.channels,
            config.mults,
            config.blocks,
            config.dropout,
            patch=config.patch,
            classes=classes,
        )
    elif config.network == "conv":
        network = ConvDenoiser(shape, out, config.channels, config.blocks, config.dropout, classes=classes)
    else:
        network = MLPDenoiser(dim, out, config.hidden, config.depth, config.dropout, classes=classes)
    return Diffusion(
        network,
        dim,
        levels,
        config.gamma_min,
        config.gamma_max,
        config.bound_steps,
        config.predict,
        classes=classes,
    )


def draws(n: int, dim: int, strata: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The scorer's noise for n rows: (u, eps, eps0), as the exported graph takes it."""
    u = torch.rand(n, strata, generator=generator)
    eps = torch.randn(n, strata * dim, generator=generator)
    eps0 = torch.randn(n, dim, generator=generator)
    return u, eps, eps0


def drop_labels(y: torch.Tensor, classes: int, p_uncond: float, generator: torch.Generator) -> torch.Tensor:
    """``y`` with each label replaced by the null class ``classes`` with probability ``p_uncond``
    (the mask drawn on the CPU from the loop's generator, as the noise is: reproducible by seed)."""
    drop = (torch.rand(len(y), generator=generator) < p_uncond).to(y.device)
    return torch.where(drop[:, None], torch.full_like(y, classes), y)


def train_diffusion(data: Dataset, config: DiffusionConfig, control: TrainControl) -> DiffusionModel:
    classes = data.classes  # None: unlabelled data, an unconditional model

    def meta_loss(net: Diffusion, x: torch.Tensor) -> torch.Tensor:
        shapes = [t.shape[1:] for t in draws(1, data.dim, config.strata, torch.Generator())]
        y = None if classes is None else torch.zeros(len(x), 1, dtype=torch.int64, device="meta")
        return net.bound(x, *(torch.zeros(len(x), *s, device="meta") for s in shapes), y).mean()

    check_fits(
        f"diffusion (network={config.network}) on {data.dim}-value rows",
        estimate_bytes(
            lambda: build(data.dim, data.levels, config, data.image_shape, classes),
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
    net = build(data.dim, data.levels, config, data.image_shape, classes)
    train = torch.as_tensor(data.train, dtype=torch.float32)
    if not data.levels:
        net.mean.copy_(train.mean(0))
        net.std.copy_(train.std(0) + 1e-3)
    net.to(device)
    val = torch.as_tensor(data.validation, dtype=torch.float32, device=device)
    val_y = None
    if classes is not None:
        # The label as the last column (exact in float32: class numbers are small integers).
        train = with_labels(train, data.labels["train"])
        val_y = torch.as_tensor(data.labels["validation"], dtype=torch.int64, device=device)[:, None]
    train = train.to(device)
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
        if classes is None:
            return -net.bound(batch, *noise).mean() * nats_to_bpd
        # The noise first, then the dropout mask: the unconditional stream of draws is unchanged.
        x, y = split_labels(batch, data.dim)
        y = drop_labels(y, classes, config.p_uncond, generator)
        return -net.bound(x, *noise, y).mean() * nats_to_bpd

    def validate() -> float:
        # On labelled data the conditional bound of each row's own label (no dropout): what the
        # conditional scorer answers, and what the model is chosen by.
        with torch.no_grad():
            out = [
                net.bound(
                    val[i : i + chunk],
                    *(t[i : i + chunk] for t in val_noise),
                    None if val_y is None else val_y[i : i + chunk],
                )
                for i in range(0, len(val), chunk)
            ]
            return float(-torch.cat(out).mean() * nats_to_bpd)

    result = fit_config(net, train, config, loss_fn=loss_fn, validate=validate, control=control)
    net.cpu().eval()
    return DiffusionModel(
        config,
        net,
        data.dim,
        data.levels,
        fit=result.__dict__,
        image_shape=data.image_shape,
        classes=classes,
    )
