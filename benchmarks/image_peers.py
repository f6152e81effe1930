"""Peers of genreg's flow, VAE and GAN on patches-rgb, trained here for a wall-clock budget (issue 26).

Each peer trains on ``patches-rgb``'s 20,790 training rows for ``--budget`` seconds with
``--threads`` torch threads (default: every core; 1 to run beside genreg's own trainings), then
reports its training rate (images/s: training rows per second of the training loop), steps and
peak RSS, draws ``--samples`` samples, and saves them (genreg's row layout: (N, 3072) float,
channels-last 32x32x3, integer levels 0..255) with its numbers to ``--out-dir/peer_NAME.npz``,
the file ``benchmarks/image_table.py table --peer`` reads. Its samples are judged with genreg's
own two-sample tests (registry.runtime.two_sample: k-NN C2ST accuracy and MMD p-value, as
`genreg evaluate` and /two_sample_test run them) against as many random test rows, beside real
validation rows as the reference row; ``--compare PATH.npy`` adds another sample set to that
table (e.g. genreg's samples of the same family).

The peers:

- ``glow``: normflows' Glow, built as in normflows' CIFAR-10 example (examples/glow_colab.ipynb):
  a ``MultiscaleFlow`` of L = 3 levels, each K ``GlowBlock``s (affine coupling with a sigmoid
  scale, a 3x3 -> 1x1 -> 3x3 ``ConvNet2d`` conditioner, an LU-parametrised invertible 1x1
  convolution, ActNorm initialised on the first batch) then a ``Squeeze``, a ``Merge`` between
  levels (factor-out of half the channels), and one diagonal Gaussian base per level. The
  example's base is class-conditional (``ClassCondDiagGaussian``); patches have no classes, so
  its unconditional counterpart ``DiagGaussian`` (a trainable mean and log-scale per latent
  element) takes its place. Scaled to a CPU budget: K = 4 blocks a level and 64 hidden channels
  (the example: K = 16, 256), the size of genreg's multi-scale flow on images (3 scales of 4
  steps, 64 channels), 0.37 M parameters; 1-thread training made about 250 images/s here
  (the example's size, 7.9 M parameters: 12). The example's optimiser (Adamax, lr 1e-3, weight decay 1e-5, a step
  skipped when the loss is not finite), batch 64 (the example: 128; fewer, cheaper steps at
  this budget). Data as the example's transform makes it: y = (x + u) / 256 in [0, 1), u ~ U[0,
  1)^D drawn afresh each step.
  Test bits/dim of the discrete data: for x in {0..255}^D, log P(x) = log int p_y((x + u) / 256)
  256^-D du >= E_u log p_y((x + u) / 256) - D log 256 (Jensen), with p_y the flow's density on
  y; the rows -> NCHW reshape is a permutation (Jacobian 1) and y is the flow's own input, so
  that is every scaling. E_u is the mean over ``--draws`` u draws per test row (an unbiased
  estimate of the bound); a non-finite bound is counted and makes the total non-finite. Samples:
  the flow's own sampler at temperature 1, y clamped to [0, 1) and floored to 256 y.

- ``pythae``: pythae's ``VAE`` (0.1.2) with its CIFAR benchmark networks
  (``pythae.models.nn.benchmarks.cifar``): ``--pythae-nets resnet`` (default) is
  ``Encoder_ResNet_VAE_CIFAR`` (convs 3 -> 64 -> 128, 4x4 stride 2, a 3x3 conv, two residual
  blocks, linear heads to the mean and log-variance) and ``Decoder_ResNet_AE_CIFAR`` (linear to
  128x8x8, two residual blocks, transposed convs 128 -> 64 -> 3, sigmoid), 3.7 M parameters at
  latent 128, 1-thread training about 350 images/s here; ``--pythae-nets conv`` is ``Encoder_Conv_VAE_CIFAR`` /
  ``Decoder_Conv_AE_CIFAR`` (convs to 1024 channels, BatchNorm; 23 M parameters, about 11
  images/s on one thread: a third of an epoch in 10 minutes). Latent dimension ``--latent``
  (default 128). Trained with the model's own loss (``model({"data": y}).loss``, its default
  ``reconstruction_loss="mse"``: 0.5 ||y - decoder(z)||^2 + KL) on dequantised y = (x + u) /
  256, with its trainer's defaults (Adam, lr 1e-4, batch 64) in this script's own loop (pythae's
  trainer counts epochs, not seconds). That loss is the negative ELBO of a Gaussian decoder
  N(decoder(z), sigma^2 I) with sigma = 1 on y (up to its constant D/2 log 2 pi; pythae's own
  ``get_nll`` says the same: "decoding distribution is assumed unit variance"). Its test bound in
  bits/dim of the discrete data: ELBO(y) - D log 256 <= E_u log p(y) - D log 256 <= log P(x),
  with the ELBO's reconstruction term under that Gaussian (whose mass outside [0, 1]^D is lost,
  which only loosens the bound), the KL in closed form as pythae's loss has it, one z per u draw,
  ``--draws`` draws a row. Reported at sigma = 1 (the density pythae trains) and at the shared
  sigma^2 that maximises the ELBO of 2,048 training rows (sigma^2 = mean ||y - decoder(z)||^2 /
  D; chosen on training rows, so the test bound stays a bound); the second is the headline
  number. Also pythae's own ``get_nll`` (importance sampling with q(z|y), sigma = 1) on
  ``--nll-rows`` dequantised test rows with ``--nll-samples`` draws, put on the same footing
  (minus D log 256). Samples: z ~ N(0, I) through the decoder, its mean (as pythae's
  ``NormalSampler`` draws them), floored to 256 y.

- ``dcgan``: a DCGAN written here from the paper (Radford, Metz and Chintala 2016): generator
  z (100, uniform on [-1, 1]) -> transposed convs 4x4 (100 -> 4w at 4x4, then stride 2: 4w ->
  2w -> w -> 3 at 32x32) with BatchNorm and ReLU, tanh output; discriminator strided 4x4 convs
  (3 -> w -> 2w -> 4w, 32x32 -> 4x4) with LeakyReLU 0.2 and BatchNorm (not on the first layer),
  a 4x4 conv to one logit; no pooling, no fully connected hidden layers; weights N(0, 0.02),
  BatchNorm scales N(1, 0.02); Adam lr 2e-4, betas (0.5, 0.999), batch 128, the non-saturating
  generator loss; images scaled to [-1, 1]. Width w = ``--dcgan-width`` (64). No likelihood.
  Samples: the generator in eval mode (BatchNorm running statistics), mapped to the 256 levels.

Install the peers into the project's venv without letting pip touch the pinned CPU torch (both
name torch in their requirements):
    .venv/bin/pip install --no-deps normflows==1.7.3      # an sdist: builds a pure-Python wheel
    .venv/bin/pip install --no-deps pythae==0.1.2
    .venv/bin/pip install cloudpickle imageio             # pythae's remaining requirements
(normflows needs only numpy and torch; pythae also names pydantic>=2, scikit-learn, scipy, tqdm
and typing-extensions, which genreg's venv has, and the ``dataclasses`` backport, a stand-in for
the standard library module on Python 3.6 that is never imported on 3.11.) A peer whose package
is missing is reported with its pip line, exit status 2; the DCGAN needs nothing.

Run (each peer in its own process when several are asked for, so each peak RSS is its own):
    .venv/bin/python benchmarks/image_peers.py --peer glow --budget 600 --threads 1
    .venv/bin/python benchmarks/image_peers.py --peer pythae --budget 600 --threads 1
    .venv/bin/python benchmarks/image_peers.py --peer dcgan --budget 600 --threads 1 \\
        --compare GENREG_GAN_SAMPLES.npy
    .venv/bin/python benchmarks/image_peers.py --budget 600            # all three, one by one
    .venv/bin/python benchmarks/image_peers.py --peer dcgan --reuse    # the saved .npz, no training

A 20-s check of each (--budget 20 --threads 1, this 2-core machine shared with other work; 100
samples against 100 test rows, where real validation rows score C2ST 0.780, MMD p 0.100):
glow 79 steps, 252 images/s, 5.511 test bits/dim, C2ST 0.880; pythae 109 steps, 346 images/s,
7.388 bits/dim at the fitted sigma (9.349 at sigma = 1; get_nll 9.346), C2ST 0.930; dcgan 31
steps, 197 images/s, C2ST 0.940; each about 1.1 GiB peak RSS (the data as float32 is 0.25 GiB).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from registry.datasets import load_patches_rgb

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (32, 32, 3)
D = SHAPE[0] * SHAPE[1] * SHAPE[2]
LOG_256 = math.log(256.0)
PEERS = ("glow", "pythae", "dcgan")
LOSS_WINDOW = 100  # the final training loss: the mean of this many last steps' losses

# normflows' LU-parametrised 1x1 convolution calls torch.lu, deprecated: noise, not a finding
warnings.filterwarnings("ignore", message="torch.lu is deprecated")

# what a missing peer prints: the pip line that installs it without touching the CPU torch
INSTALL = {
    "glow": ("normflows", ".venv/bin/pip install --no-deps normflows==1.7.3"),
    "pythae": (
        "pythae",
        ".venv/bin/pip install --no-deps pythae==0.1.2 && .venv/bin/pip install cloudpickle imageio",
    ),
}


def require(peer: str) -> Any:
    """The peer's package, or exit 2 with the pip line that installs it."""
    if peer not in INSTALL:
        return None
    module, line = INSTALL[peer]
    try:
        return __import__(module)
    except ImportError as error:
        print(f"{peer}: the peer package {module!r} is not installed here ({error}). Install it with:")
        print(f"    {line}")
        sys.exit(2)


def _diffusion_peer() -> Any:
    """benchmarks/diffusion_peer.py, for its two-sample table (the same tests, test rows and layout)."""
    spec = importlib.util.spec_from_file_location(
        "genreg_diffusion_peer", ROOT / "benchmarks" / "diffusion_peer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nchw(rows: np.ndarray) -> torch.Tensor:
    """genreg rows (n, 3072), channels-last levels, as an NCHW float32 tensor of the same levels."""
    x = torch.as_tensor(np.asarray(rows, np.float32).reshape(-1, *SHAPE))
    return x.permute(0, 3, 1, 2).contiguous()


def dequantise(levels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """y = (x + u) / 256, u ~ U[0, 1)^D: the peers' continuous data in [0, 1)."""
    u = torch.rand(levels.shape, generator=generator, device=levels.device)
    return (levels + u) / 256.0


def unit_to_rows(y: torch.Tensor) -> tuple[np.ndarray, int]:
    """NCHW values in [0, 1] (y = (x + u) / 256 on the way in) as genreg rows of levels 0..255,
    and how many values were not finite (set to 0 before flooring)."""
    y = y.detach().float().cpu()
    bad = int((~torch.isfinite(y)).sum())
    levels = torch.floor(torch.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0) * 256.0).clamp(0, 255)
    return levels.permute(0, 2, 3, 1).reshape(len(y), -1).numpy().astype(np.float64), bad


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def train_for(
    step: Callable[[torch.Tensor], float], images: torch.Tensor, budget: float, batch: int, seed: int
) -> dict[str, float]:
    """Calls ``step`` on random training batches (levels, NCHW) until ``budget`` seconds have passed."""
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    start = time.perf_counter()
    first = start  # the end of the first step: its one-off costs (ActNorm's init, allocations) apart
    while time.perf_counter() - start < budget:
        idx = torch.as_tensor(rng.integers(0, len(images), batch))
        losses.append(step(images[idx]))
        if len(losses) == 1:
            first = time.perf_counter()
    seconds = time.perf_counter() - start
    steps = len(losses)
    finite = [v for v in losses[-LOSS_WINDOW:] if math.isfinite(v)]
    return {
        "steps": steps,
        "seconds": seconds,
        "images_per_second": steps * batch / seconds if seconds > 0 else 0.0,
        "steady_images_per_second": (steps - 1) * batch / (start + seconds - first)
        if steps > 1
        else float("nan"),
        "final_loss": float(np.mean(finite)) if finite else float("nan"),
        "nonfinite_losses": sum(not math.isfinite(v) for v in losses),
    }


def bits_per_dim(bounds: np.ndarray) -> float:
    """bits/dim of the discrete data from per-row lower bounds on log P(x) in nats."""
    return float(-np.mean(bounds) / (D * math.log(2.0)))


# ---------------------------------------------------------------------------------------- glow


def build_glow(nf: Any, levels: int, blocks: int, hidden: int) -> nn.Module:
    """normflows' multi-scale Glow as its CIFAR-10 example builds it, with an unconditional base."""
    c, h, w = SHAPE[2], SHAPE[0], SHAPE[1]
    bases, merges, flows = [], [], []
    for i in range(levels):  # level 0 is the coarsest; the example's channel arithmetic
        level = [
            nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
            for _ in range(blocks)
        ]
        flows.append([*level, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        bases.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(bases, flows, merges, class_cond=False)


@torch.no_grad()
def glow_bounds(
    model: nn.Module, rows: np.ndarray, draws: int, batch: int, device: str, seed: int
) -> np.ndarray:
    """Per-row E_u log p_y((x + u) / 256) - D log 256 (nats), the mean over ``draws`` u draws."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    levels = nchw(rows).to(device)
    out = np.zeros(len(levels))
    for _ in range(draws):
        for lo in range(0, len(levels), batch):
            y = dequantise(levels[lo : lo + batch], generator)
            out[lo : lo + batch] += model.log_prob(y, None).double().cpu().numpy()
    return out / draws - D * LOG_256


def run_glow(args: argparse.Namespace, data: Any, device: str) -> dict[str, Any]:
    nf = require("glow")
    torch.manual_seed(args.seed)
    model = build_glow(nf, 3, args.glow_blocks, args.glow_hidden).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"normflows {nf.__version__}: MultiscaleFlow, L=3 levels x K={args.glow_blocks} GlowBlocks "
        f"(hidden {args.glow_hidden} channels), DiagGaussian bases; {params:,} parameters"
    )
    opt = torch.optim.Adamax(model.parameters(), lr=args.lr or 1e-3, weight_decay=1e-5)
    images = nchw(data.train).to(device)
    batch = args.batch or 64

    def step(x: torch.Tensor) -> float:
        loss = model.forward_kld(dequantise(x))
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):  # the example's guard: a non-finite loss skips the step
            loss.backward()
            opt.step()
        return float(loss.detach()) / (D * math.log(2.0)) + 8.0  # training bits/dim

    model.train()
    stats = train_for(step, images, args.budget, batch, args.seed)
    stats["batch"] = batch
    stats["train_peak_rss_gib"] = peak_rss_gib()
    start = time.perf_counter()
    bounds = glow_bounds(model, data.test, args.draws, 100, device, args.seed + 2)
    stats["eval_seconds"] = time.perf_counter() - start
    torch.manual_seed(args.seed + 1)
    with torch.no_grad():
        y, _ = model.sample(args.samples)
    samples, bad = unit_to_rows(y)
    nonfinite = int((~np.isfinite(bounds)).sum())
    return {
        "name": f"normflows Glow (L=3, K={args.glow_blocks}, hidden {args.glow_hidden})",
        "samples": samples,
        "test_bounds": bounds,
        "bits_per_dim": bits_per_dim(bounds),
        "stats": stats,
        "notes": [
            f"training loss: {stats['final_loss']:.3f} bits/dim (mean of the last steps; the example's "
            f"nll / D / ln 2 + 8); {stats['nonfinite_losses']} non-finite losses (steps skipped)",
            f"test: {len(bounds)} rows x {args.draws} u draws, {nonfinite} non-finite bounds, "
            f"{stats['eval_seconds']:.1f} s",
            f"samples: {bad} non-finite values",
        ],
    }


# -------------------------------------------------------------------------------------- pythae


def build_vae(nets: str, latent: int) -> nn.Module:
    from pythae.models import VAE, VAEConfig
    from pythae.models.nn.benchmarks import cifar

    config = VAEConfig(input_dim=(3, 32, 32), latent_dim=latent, reconstruction_loss="mse")
    if nets == "resnet":
        encoder, decoder = cifar.Encoder_ResNet_VAE_CIFAR(config), cifar.Decoder_ResNet_AE_CIFAR(config)
    else:
        encoder, decoder = cifar.Encoder_Conv_VAE_CIFAR(config), cifar.Decoder_Conv_AE_CIFAR(config)
    return VAE(model_config=config, encoder=encoder, decoder=decoder)


@torch.no_grad()
def vae_terms(model: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||y - decoder(z)||^2, KL(q(z|y) || N(0, I))) per row, one z ~ q(z|y)."""
    out = model.encoder(y)
    mu, log_var = out.embedding, out.log_covariance
    z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
    recon = model.decoder(z)["reconstruction"]
    sq = (recon - y).pow(2).flatten(1).sum(1)
    kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)
    return sq.double(), kl.double()


def vae_bounds(
    model: nn.Module, rows: np.ndarray, draws: int, sigma2s: list[float], device: str, seed: int
) -> list[np.ndarray]:
    """Per-row ELBO(y) - D log 256 (nats) under N(decoder(z), sigma^2 I) for each sigma^2, the mean
    over ``draws`` (u, z) draws."""
    model.eval()
    torch.manual_seed(seed)
    levels = nchw(rows).to(device)
    out = [np.zeros(len(levels)) for _ in sigma2s]
    for _ in range(draws):
        for lo in range(0, len(levels), 100):
            sq, kl = vae_terms(model, dequantise(levels[lo : lo + 100]))
            for bound, s2 in zip(out, sigma2s, strict=True):
                rec = -0.5 * sq / s2 - 0.5 * D * math.log(2 * math.pi * s2)
                bound[lo : lo + 100] += (rec - kl).cpu().numpy()
    return [b / draws - D * LOG_256 for b in out]


def fitted_sigma2(model: nn.Module, rows: np.ndarray, device: str, seed: int) -> float:
    """The shared decoder variance that maximises the ELBO of these rows: mean ||y - decoder(z)||^2 / D."""
    model.eval()
    torch.manual_seed(seed)
    levels = nchw(rows).to(device)
    total = 0.0
    for lo in range(0, len(levels), 256):
        sq, _ = vae_terms(model, dequantise(levels[lo : lo + 256]))
        total += float(sq.sum())
    return total / (len(levels) * D)


def run_pythae(args: argparse.Namespace, data: Any, device: str) -> dict[str, Any]:
    pythae = require("pythae")
    torch.manual_seed(args.seed)
    model = build_vae(args.pythae_nets, args.latent).to(device)
    params = sum(p.numel() for p in model.parameters())
    encoder, decoder = type(model.encoder).__name__, type(model.decoder).__name__
    version = getattr(pythae, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("pythae")
    print(
        f"pythae {version}: VAE (reconstruction_loss=mse), {encoder} / {decoder}, latent {args.latent}; "
        f"{params:,} parameters"
    )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr or 1e-4)
    images = nchw(data.train).to(device)
    batch = args.batch or 64

    def step(x: torch.Tensor) -> float:
        loss = model({"data": dequantise(x)}).loss  # pythae's own loss: 0.5 ||y - mu||^2 + KL
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    model.train()
    stats = train_for(step, images, args.budget, batch, args.seed)
    stats["batch"] = batch
    stats["train_peak_rss_gib"] = peak_rss_gib()
    start = time.perf_counter()
    fit_rows = data.train[np.random.default_rng(args.seed + 3).permutation(len(data.train))[:2048]]
    sigma2 = fitted_sigma2(model, fit_rows, device, args.seed + 3)
    unit, fitted = vae_bounds(model, data.test, args.draws, [1.0, sigma2], device, args.seed + 2)
    stats["eval_seconds"] = time.perf_counter() - start
    notes = [
        f"training loss: {stats['final_loss']:.2f} (pythae's 0.5 ||y - mu||^2 + KL, nats a row, mean of the last steps)",
        f"test ELBO - D log 256 at sigma = 1 (pythae's implied decoder): {bits_per_dim(unit):.3f} bits/dim",
        f"test ELBO - D log 256 at sigma = {math.sqrt(sigma2):.4f} (fitted on 2,048 training rows; "
        f"{math.sqrt(sigma2) * 256:.1f} levels): {bits_per_dim(fitted):.3f} bits/dim "
        f"({len(fitted)} rows x {args.draws} draws, {stats['eval_seconds']:.1f} s)",
    ]
    if args.nll_rows > 0:
        start = time.perf_counter()
        rows = data.test[np.random.default_rng(args.seed).permutation(len(data.test))[: args.nll_rows]]
        torch.manual_seed(args.seed + 4)
        y = dequantise(nchw(rows).to(device))
        with torch.no_grad():  # get_nll returns the mean log p(y) (not its negative), sigma = 1
            log_p = model.get_nll(y, n_samples=args.nll_samples, batch_size=args.nll_samples)
        notes.append(
            f"pythae get_nll ({args.nll_samples} importance samples, sigma = 1, {len(rows)} test rows, "
            f"one u each): log p(y) = {log_p:.1f} nats, so {bits_per_dim(np.array([log_p - D * LOG_256])):.3f} "
            f"bits/dim ({time.perf_counter() - start:.1f} s)"
        )
    torch.manual_seed(args.seed + 1)
    with torch.no_grad():  # pythae's NormalSampler: z ~ N(0, I), the decoder's mean
        z = torch.randn(args.samples, args.latent, device=device)
        samples, bad = unit_to_rows(model.decoder(z)["reconstruction"])
    notes.append(f"samples: decoder means at z ~ N(0, I); {bad} non-finite values")
    return {
        "name": f"pythae VAE ({args.pythae_nets} CIFAR nets, latent {args.latent})",
        "samples": samples,
        "test_bounds": fitted,
        "test_bounds_unit_variance": unit,
        "decoder_sigma": math.sqrt(sigma2),
        "bits_per_dim": bits_per_dim(fitted),
        "stats": stats,
        "notes": notes,
    }


# --------------------------------------------------------------------------------------- dcgan

Z_DIM = 100


class Generator(nn.Module):
    """DCGAN's generator for 32x32: z -> 4x4 -> 8x8 -> 16x16 -> 32x32, BatchNorm + ReLU, tanh."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.ConvTranspose2d(Z_DIM, 4 * w, 4, 1, 0, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(True),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(True),
            nn.ConvTranspose2d(w, 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(len(z), Z_DIM, 1, 1))


class Discriminator(nn.Module):
    """DCGAN's discriminator for 32x32: strided convs, LeakyReLU 0.2, BatchNorm after the first."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * w, 1, 4, 1, 0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)  # logits


def dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: weights N(0, 0.02); BatchNorm scales N(1, 0.02), shifts 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def noise(n: int, device: str) -> torch.Tensor:
    return torch.rand(n, Z_DIM, device=device) * 2.0 - 1.0  # the paper's uniform noise


def run_dcgan(args: argparse.Namespace, data: Any, device: str) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    gen, disc = Generator(args.dcgan_width).to(device), Discriminator(args.dcgan_width).to(device)
    gen.apply(dcgan_init)
    disc.apply(dcgan_init)
    params = sum(p.numel() for p in gen.parameters()), sum(p.numel() for p in disc.parameters())
    print(
        f"DCGAN (from the paper), width {args.dcgan_width}: generator {params[0]:,}, discriminator {params[1]:,} parameters"
    )
    lr = args.lr or 2e-4
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    images = nchw(data.train).to(device)
    batch = args.batch or 128
    d_losses: list[float] = []

    def step(x: torch.Tensor) -> float:
        real = x / 127.5 - 1.0  # levels to tanh's range
        fake = gen(noise(len(real), device))
        ones, zeros = torch.ones(len(real), device=device), torch.zeros(len(real), device=device)
        loss_d = bce(disc(real), ones) + bce(disc(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = bce(disc(fake), ones)  # non-saturating: maximise log D(G(z))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d_losses.append(float(loss_d.detach()))
        return float(loss_g.detach())

    gen.train()
    disc.train()
    stats = train_for(step, images, args.budget, batch, args.seed)
    stats["batch"] = batch
    stats["train_peak_rss_gib"] = peak_rss_gib()
    gen.eval()
    torch.manual_seed(args.seed + 1)
    with torch.no_grad():
        x = gen(noise(args.samples, device))
    # [-1, 1] -> the nearest of the levels 0..255 (the inverse of x / 127.5 - 1), at a bin's centre
    samples, bad = unit_to_rows((torch.round((x + 1.0) * 127.5) + 0.5) / 256.0)
    return {
        "name": f"DCGAN reference (width {args.dcgan_width})",
        "samples": samples,
        "stats": stats,
        "notes": [
            f"final losses (mean of the last steps): generator {stats['final_loss']:.3f}, "
            f"discriminator {np.mean(d_losses[-LOSS_WINDOW:]) if d_losses else float('nan'):.3f}",
            f"samples: generator in eval mode (BatchNorm running statistics); {bad} non-finite values",
        ],
    }


RUNNERS = {"glow": run_glow, "pythae": run_pythae, "dcgan": run_dcgan}


def pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: PyTorch sees no CUDA device here")
    return choice


def save(path: Path, result: dict[str, Any], args: argparse.Namespace, device: str) -> None:
    stats = result["stats"]
    arrays: dict[str, Any] = {
        "name": np.array(result["name"]),
        "samples": result["samples"],
        "images_per_second": np.float64(stats["images_per_second"]),
        "steps": np.int64(stats["steps"]),
        "seconds": np.float64(stats["seconds"]),
        "batch": np.int64(stats["batch"]),
        "peak_rss_gib": np.float64(peak_rss_gib()),
        "threads": np.int64(torch.get_num_threads()),
        "device": np.array(device),
        "budget": np.float64(args.budget),
    }
    for key in ("bits_per_dim", "test_bounds", "test_bounds_unit_variance", "decoder_sigma"):
        if key in result:
            arrays[key] = np.asarray(result[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    print(f"saved {path} ({', '.join(arrays)})")


def table(name: str, saved: Any, data: Any, compare: Path | None, seed: int) -> None:
    """The peer's numbers, then C2ST and MMD of its samples (and --compare's) against test rows."""
    bpd = f"{float(saved['bits_per_dim']):.3f}" if "bits_per_dim" in saved else "no likelihood"
    print("\n| peer | test bits/dim | training images/s | steps | batch | threads | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {name} | {bpd} | {float(saved['images_per_second']):.1f} | {int(saved['steps'])} "
        f"| {int(saved['batch'])} | {int(saved['threads'])} | {float(saved['peak_rss_gib']):.2f} GiB |"
    )
    samples = np.asarray(saved["samples"])
    sets = {f"peer: {name}": samples}
    if compare is not None:
        other = np.load(compare)
        other = other["samples"] if isinstance(other, np.lib.npyio.NpzFile) else other
        if other.ndim != 2 or other.shape[1] != D:
            raise SystemExit(f"{compare}: shape {other.shape}, expected (n, {D})")
        sets[f"other ({compare.name})"] = other
    if min(len(x) for x in sets.values()) < 10:
        raise SystemExit("C2ST needs at least 10 rows a sample")
    reference = data.validation[np.random.default_rng(seed + 1).permutation(len(data.validation))]
    sets["validation rows (reference)"] = reference[: max(len(x) for x in sets.values())]
    print(f"\nTwo-sample tests against the test split ({len(data.test)} rows; each set against as many):")
    print("\n".join(_diffusion_peer().compare(sets, data.test, seed)))


def run_one(args: argparse.Namespace, peer: str) -> None:
    if not args.reuse:
        require(peer)  # before anything else: a missing peer says how to install it, exit 2
    data = load_patches_rgb()
    assert data.image_shape == SHAPE
    path = args.out_dir / f"peer_{peer}.npz"
    if not args.reuse:
        device = pick_device(args.device)
        torch.set_num_threads(args.threads)
        print(
            f"{peer}: torch {torch.__version__}, {torch.get_num_threads()} threads, {device}, budget {args.budget:g} s"
        )
        result = RUNNERS[peer](args, data, device)
        stats = result["stats"]
        print(
            f"training: {stats['steps']} steps of batch {stats['batch']} in {stats['seconds']:.1f} s, "
            f"{stats['images_per_second']:.1f} images/s ({stats['steady_images_per_second']:.1f} after the first "
            f"step); peak RSS {stats['train_peak_rss_gib']:.2f} GiB after training, {peak_rss_gib():.2f} GiB now"
        )
        if device == "cuda":
            print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        for note in result["notes"]:
            print(note)
        save(path, result, args, device)
    saved = np.load(path, allow_pickle=False)
    table(str(saved["name"]), saved, data, args.compare, args.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", action="append", choices=PEERS, help="repeatable; default: all three")
    parser.add_argument("--budget", type=float, default=600.0, help="training wall-clock seconds")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--draws", type=int, default=4, help="u (and z) draws a test row for the bounds")
    parser.add_argument("--batch", type=int, help="default: glow 64, pythae 64, dcgan 128")
    parser.add_argument("--lr", type=float, help="default: glow 1e-3, pythae 1e-4, dcgan 2e-4")
    parser.add_argument("--glow-blocks", type=int, default=4, help="GlowBlocks a level (the example: 16)")
    parser.add_argument("--glow-hidden", type=int, default=64, help="conditioner channels (the example: 256)")
    parser.add_argument("--pythae-nets", choices=("resnet", "conv"), default="resnet")
    parser.add_argument("--latent", type=int, default=128, help="pythae VAE's latent dimension")
    parser.add_argument("--nll-rows", type=int, default=100, help="test rows for pythae's get_nll (0: skip)")
    parser.add_argument("--nll-samples", type=int, default=100, help="importance samples of get_nll")
    parser.add_argument("--dcgan-width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument(
        "--compare", type=Path, help="another (n, 3072) sample array (.npy, or .npz with samples)"
    )
    parser.add_argument("--reuse", action="store_true", help="the saved peer_NAME.npz, no training")
    args = parser.parse_args()
    if args.samples < 10:
        parser.error("--samples must be at least 10 (C2ST)")
    if args.draws < 1 or args.threads < 1:
        parser.error("--draws and --threads must be at least 1")
    peers = args.peer or list(PEERS)
    if len(peers) == 1:
        run_one(args, peers[0])
        return
    # one process a peer: each peak RSS is its own, and a missing peer does not stop the others
    rest, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--peer="):
            skip = False
        elif arg == "--peer":
            skip = True
        else:
            rest.append(arg)
    failed = []
    for peer in peers:
        print(f"\n=== {peer} ===", flush=True)
        done = subprocess.run([sys.executable, __file__, "--peer", peer, *rest], cwd=ROOT)
        if done.returncode != 0:
            failed.append(f"{peer} (exit {done.returncode})")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(2 if all("exit 2" in f for f in failed) else 1)


if __name__ == "__main__":
    main()
