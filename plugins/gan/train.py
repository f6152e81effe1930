"""GAN training: alternating discriminator and generator steps, the best generator kept by
validation MMD^2 (a likelihood-free quality figure shown live in the progress bar).

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

from plugins.common.training import pick_device, seed_everything
from plugins.gan.config import GANConfig, GANModel
from plugins.gan.model import Discriminator, Generator
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl
from registry.runtime.two_sample import mmd_test

QUALITY_ROWS = 500


def labels_of(data: Dataset, split: str, device: torch.device) -> torch.Tensor | None:
    """A split's labels as an (n, 1) int64 column (the graphs' "y"), or None without labels."""
    if data.labels is None:
        return None
    return torch.as_tensor(data.labels[split], dtype=torch.int64, device=device)[:, None]


def train_gan(data: Dataset, config: GANConfig, control: TrainControl) -> GANModel:
    generator_rng = seed_everything(control.seed)
    device = pick_device(control)
    classes = (data.classes or 0) if data.labels is not None else 0
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
    best = (math.inf, 0)
    best_state = (copy.deepcopy(gen.state_dict()), copy.deepcopy(disc.state_dict()))
    history: list[dict[str, float]] = []
    start = time.monotonic()
    stopped = "epochs"
    bar = tqdm(range(1, epochs + 1), disable=not control.progress, unit="epoch", dynamic_ncols=True)
    d_loss = g_loss = torch.tensor(math.nan)
    for epoch in bar:
        gen.train()
        disc.train()
        perm = torch.randperm(len(train), generator=generator_rng).to(device)
        for i in range(0, len(train) - 1, batch_size):
            rows = perm[i : i + batch_size]
            real = real_batch(train[rows])
            y = None if labels is None else labels[rows]
            for _ in range(config.d_steps):
                z = torch.randn(len(real), config.latent, generator=generator_rng).to(device)
                fake = gen(z, y).detach()
                # -[log D(x) + log(1 - D(G(z)))] with D = sigmoid(logit).
                d_loss = F.softplus(-disc(real, y)).mean() + F.softplus(disc(fake, y)).mean()
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            z = torch.randn(len(real), config.latent, generator=generator_rng).to(device)
            logit_fake = disc(gen(z, y), y)
            if config.loss == "non-saturating":
                g_loss = F.softplus(-logit_fake).mean()  # -log D(G(z))
            else:
                g_loss = -F.softplus(logit_fake).mean()  # log(1 - D(G(z)))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
        if epoch % config.eval_every == 0 or epoch == epochs:
            gen.eval()
            with torch.no_grad():
                samples = gen.sample(quality_z.to(device), quality_y).cpu().double().numpy()
            mmd = mmd_test(val, samples, permutations=0)["statistic"]
            dl, gl = float(d_loss.detach()), float(g_loss.detach())
            history.append({"epoch": epoch, "d_loss": dl, "g_loss": gl, "mmd2": mmd})
            if mmd < best[0]:
                best = (mmd, epoch)
                best_state = (copy.deepcopy(gen.state_dict()), copy.deepcopy(disc.state_dict()))
            bar.set_postfix_str(f"D {dl:.3f} G {gl:.3f} val MMD^2 {mmd:.4f} (best {best[0]:.4f} @ {best[1]})")
        if time.monotonic() > deadline:
            stopped = "time-budget"
            break
    bar.close()
    gen.load_state_dict(best_state[0])
    disc.load_state_dict(best_state[1])
    gen.cpu().eval()
    disc.cpu().eval()
    fit = {
        "epochs": epoch,
        "best_epoch": best[1],
        "best_validation_mmd2": best[0],
        "seconds": time.monotonic() - start,
        "stopped": stopped,
        "history": history[-20:],
    }
    return GANModel(config, gen, disc, data.dim, data.levels, fit=fit)
