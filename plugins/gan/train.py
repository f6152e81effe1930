"""GAN training: alternating discriminator and generator steps, the best generator kept by
validation MMD^2 (a likelihood-free quality figure shown live in the progress bar).

Validation runs every ``eval_every`` epochs, or every ``eval_steps`` generator steps where set
(colour images: an epoch of patches-rgb is minutes on a CPU); the time budget is checked where
validation is planned (after each epoch, or each step), and a run stopped by it validates its
last state before choosing.

On labelled data the same game given the label: D(x, y) on real rows with their own labels
and on fakes G(z, y) drawn with the batch's labels (so fakes follow the data's p(y)), and G
plays against D(G(z, y), y). The validation MMD compares held-out rows with samples drawn
with those rows' labels."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from plugins.common.training import full_float32, loss_autocast, pick_device, seed_everything, train_precision
from plugins.gan.config import GANConfig, GANModel
from plugins.gan.model import ConvDiscriminator, ConvGenerator, Discriminator, Generator
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl
from registry.runtime.two_sample import mmd_test

QUALITY_ROWS = 500


def labels_of(data: Dataset, split: str, device: torch.device) -> torch.Tensor | None:
    """A split's labels as an (n, 1) int64 column (the graphs' "y"), or None without labels."""
    if data.labels is None:
        return None
    return torch.as_tensor(data.labels[split], dtype=torch.int64, device=device)[:, None]


def networks(data: Dataset, config: GANConfig, classes: int) -> tuple[Generator, Discriminator]:
    """G and D for a resolved config: DCGAN's (arch=conv) or the MLPs."""
    if config.arch == "conv":
        assert data.image_shape is not None and config.channels is not None  # GANConfig.resolve
        return (
            ConvGenerator(config.latent, data.image_shape, data.levels, config.channels, classes=classes),
            ConvDiscriminator(data.image_shape, data.levels, config.channels, config.d_norm, classes=classes),
        )
    gen = Generator(config.latent, data.dim, data.levels, config.hidden, config.depth, classes=classes)
    # A leakier discriminator with dropout stops mode collapse on digits but causes it on the
    # 2-D toys, so each kind of data keeps its own (benchmarks/RESULTS.md, GAN).
    image = data.dim > 2
    disc = Discriminator(
        data.dim,
        data.levels,
        config.hidden,
        config.depth,
        dropout=0.3 if image else 0.0,
        slope=0.2 if image else 0.01,
        classes=classes,
    )
    return gen, disc


def train_gan(data: Dataset, config: GANConfig, control: TrainControl) -> GANModel:
    """Train on a resolved config (GANConfig.resolve)."""
    generator_rng = seed_everything(control.seed)
    device = pick_device(control)
    precision = train_precision(control, device)
    classes = (data.classes or 0) if data.labels is not None else 0
    gen, disc = networks(data, config, classes)
    train = torch.as_tensor(data.train, dtype=torch.float32)
    for scaler in (gen.scaler, disc.scaler):
        scaler.mean.copy_(train.mean(0))
        scaler.std.copy_(train.std(0) + 1e-6)
    gen.to(device)
    disc.to(device)
    train = train.to(device)
    # Each row's label (None: unconditional), indexed with its row.
    labels = labels_of(data, "train", device)
    levels = data.levels

    def real_batch(x: torch.Tensor) -> torch.Tensor:
        if levels:
            # Dequantise so D cannot win by spotting the lattice of the real images.
            u = torch.rand(x.shape, generator=generator_rng).to(device)
            return torch.clamp((x + u - 0.5) / (levels - 1), 0.0, 1.0)
        return disc.scaler.to_net(x)

    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=(0.5, 0.999))
    epochs = control.epochs or config.epochs or (300 if data.dim > 2 else 60)
    # Digits have ~1,250 images: small batches give the generator enough steps (about 6,000).
    batch_size = config.batch_size or (64 if data.dim > 2 else 256)
    deadline = time.monotonic() + control.time_budget if control.time_budget else math.inf
    val = data.validation[:QUALITY_ROWS].astype(np.float64)
    quality_z = torch.randn(
        QUALITY_ROWS, config.latent, generator=torch.Generator().manual_seed(control.seed + 1)
    )
    val_labels = labels_of(data, "validation", device)
    # The quality samples' labels: the held-out rows', cycled (there may be fewer than QUALITY_ROWS).
    quality_y = (
        None if val_labels is None else val_labels[torch.arange(QUALITY_ROWS, device=device) % len(val)]
    )
    best = (math.inf, 0, 0)  # (validation MMD^2, epoch, generator step)
    best_state = (copy.deepcopy(gen.state_dict()), copy.deepcopy(disc.state_dict()))
    history: list[dict[str, float]] = []
    start = time.monotonic()
    stopped = "epochs"
    bar = tqdm(range(1, epochs + 1), disable=not control.progress, unit="epoch", dynamic_ncols=True)
    d_loss = g_loss = torch.tensor(math.nan)
    steps = rows_trained = 0
    step_seconds = 0.0
    validated = -1  # the generator step last validated

    def validate(epoch: int) -> None:
        nonlocal best, best_state, validated
        validated = steps
        gen.eval()
        with torch.no_grad(), full_float32(device):
            samples = gen.sample(quality_z.to(device), quality_y).cpu().double().numpy()
        gen.train()
        mmd = mmd_test(val, samples, permutations=0)["statistic"]
        dl, gl = float(d_loss.detach()), float(g_loss.detach())
        history.append({"epoch": epoch, "step": steps, "d_loss": dl, "g_loss": gl, "mmd2": mmd})
        if mmd < best[0]:
            best = (mmd, epoch, steps)
            best_state = (copy.deepcopy(gen.state_dict()), copy.deepcopy(disc.state_dict()))
        bar.set_postfix_str(f"D {dl:.3f} G {gl:.3f} val MMD^2 {mmd:.4f} (best {best[0]:.4f} @ {best[1]})")

    for epoch in bar:
        gen.train()
        disc.train()
        perm = torch.randperm(len(train), generator=generator_rng).to(device)
        tick = time.monotonic()
        for i in range(0, len(train) - 1, batch_size):
            rows = perm[i : i + batch_size]
            real = real_batch(train[rows])
            y = None if labels is None else labels[rows]
            for _ in range(config.d_steps):
                z = torch.randn(len(real), config.latent, generator=generator_rng).to(device)
                with loss_autocast(device, precision):
                    fake = gen(z, y).detach()
                    # -[log D(x) + log(1 - D(G(z)))] with D = sigmoid(logit).
                    d_loss = F.softplus(-disc(real, y)).mean() + F.softplus(disc(fake, y)).mean()
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            z = torch.randn(len(real), config.latent, generator=generator_rng).to(device)
            with loss_autocast(device, precision):
                logit_fake = disc(gen(z, y), y)
                if config.loss == "non-saturating":
                    g_loss = F.softplus(-logit_fake).mean()  # -log D(G(z))
                else:
                    g_loss = -F.softplus(logit_fake).mean()  # log(1 - D(G(z)))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            steps += 1
            rows_trained += len(real)
            if config.eval_steps is None:
                continue
            over = time.monotonic() > deadline
            if steps % config.eval_steps == 0 or over:
                _sync(device)
                step_seconds += time.monotonic() - tick
                validate(epoch)
                tick = time.monotonic()
            if over:
                break
        _sync(device)
        step_seconds += time.monotonic() - tick
        if config.eval_steps is None and (epoch % config.eval_every == 0 or epoch == epochs):
            validate(epoch)
        if time.monotonic() > deadline:
            stopped = "time-budget"
            if validated != steps:
                validate(epoch)
            break
    else:
        if validated != steps:
            validate(epoch)
    bar.close()
    gen.load_state_dict(best_state[0])
    disc.load_state_dict(best_state[1])
    gen.cpu().eval()
    disc.cpu().eval()
    if isinstance(disc, ConvDiscriminator):
        disc.freeze()
    fit = {
        "epochs": epoch,
        "best_epoch": best[1],
        "best_step": best[2],
        "steps": steps,
        "best_validation_mmd2": best[0],
        "seconds": time.monotonic() - start,
        "stopped": stopped,
        "history": history[-20:],
        # Rows trained per second of the training steps (validation left out), as FitResult has it.
        "rows_per_second": rows_trained / step_seconds if step_seconds > 0 else 0.0,
        "precision": precision,
    }
    return GANModel(config, gen, disc, data.dim, data.levels, fit=fit, image_shape=data.image_shape)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
