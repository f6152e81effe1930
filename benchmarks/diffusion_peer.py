"""A peer diffusion model on patches-rgb: lucidrains' denoising-diffusion-pytorch, trained here.

What it measures, on this machine's CPUs (torch.set_num_threads(os.cpu_count())):
- training: the peer's own ``Unet`` and ``GaussianDiffusion`` (its defaults: v-prediction,
  sigmoid beta schedule, T = 1000, loss weighting by SNR), in a small configuration for a CPU
  (dim 32, dim_mults (1, 2, 2): 32x32 -> 16x16 -> 8x8, the constructor's fixed two ResNet blocks
  a level, linear attention at each level and full attention at the innermost level and the
  middle, which the constructor offers no way to turn off), trained on ``patches-rgb``'s
  training rows (x / 255 in [0, 1]; the library maps them to [-1, 1] itself) for a wall-clock
  budget, with this script's own loop (not the library's Trainer, which reads image folders):
  AdamW, lr 2e-4, betas (0.9, 0.99) and gradient clipping at norm 1 as in the library's Trainer,
  batch 32, samples from the trained weights as genreg's are (--ema: from the Trainer's EMA of
  the weights, ema_pytorch with decay 0.995 every 10 steps, which is made for runs of 100k+
  steps: in the few hundred steps a CPU budget allows it still holds much of the early weights);
- the training rate in images/s, the steps done and the final training loss (the mean of the
  last 100 steps' losses);
- sampling: N images with the library's DDIM sampler (eta 0) at --sample-steps steps (1000: its
  ancestral sampler), the time for all N and per sample;
- the samples are saved in genreg's row layout, (N, 3072) float, channels-last 32x32x3
  flattened, rounded to the integer levels 0..255, so they compare directly with genreg's
  samples and the data rows;
- --compare PATH.npy (another sample array in the same layout, e.g. genreg's diffusion
  samples): k-NN C2ST accuracy and MMD p-value of each sample set against as many rows of the
  test split (a seeded random subset: the split's rows are in scan order), with genreg's own
  tests (registry.runtime.two_sample, as `genreg evaluate` and /two_sample_test run them), and
  random validation rows as a reference row (what real data scores): a markdown table.

Install the peer into the project's venv without letting pip touch the pinned CPU torch (its
requirements name torch, torchvision and pytorch-fid; torchvision's PyPI build needs the CUDA
torch and pytorch-fid only serves the Trainer's FID, so neither is installed):
    .venv/bin/pip install --no-deps denoising-diffusion-pytorch==2.3.4 einops ema-pytorch accelerate
    .venv/bin/pip install huggingface-hub safetensors   # accelerate's remaining requirements
The package imports torchvision at module level only for its Trainer's image-folder dataset and
image saving, neither used here: where torchvision is missing (or cannot load against the CPU
torch), this script puts an empty stand-in module in its place before importing the package.

Run:
    .venv/bin/python benchmarks/diffusion_peer.py --budget 600
    .venv/bin/python benchmarks/diffusion_peer.py --budget 600 --compare GENREG_SAMPLES.npy
    .venv/bin/python benchmarks/diffusion_peer.py --reuse --compare GENREG_SAMPLES.npy
(--reuse: the peer's samples from --out, no training.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # the library's sampler wraps its loop in tqdm

import numpy as np
import torch

from registry.datasets import load_patches_rgb
from registry.runtime.two_sample import c2st, mmd_test

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_OUT = ROOT / "benchmarks" / "out" / "peer_diffusion_samples.npy"
SHAPE = (32, 32, 3)
LOSS_WINDOW = 100  # the final training loss: the mean of this many last steps' losses


def _stand_in_torchvision() -> None:
    """An empty ``torchvision`` (with ``transforms`` and ``utils``) in sys.modules, so that the
    peer's module-level ``from torchvision import transforms as T, utils`` succeeds; any use of
    them (only the library's Trainer and folder Dataset have one) raises AttributeError."""

    def missing(name: str) -> Any:
        # AttributeError (what hasattr and inspect expect of a module without the name)
        raise AttributeError(f"{name}: torchvision is not installed (a stand-in from {Path(__file__).name})")

    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]  # what a failed import of a broken torchvision left behind
    package = types.ModuleType("torchvision")
    for sub in ("transforms", "utils"):
        module = types.ModuleType(f"torchvision.{sub}")
        module.__getattr__ = missing  # type: ignore[method-assign]
        setattr(package, sub, module)
        sys.modules[f"torchvision.{sub}"] = module
    sys.modules["torchvision"] = package


def import_peer() -> types.ModuleType:
    """The ``denoising_diffusion_pytorch`` package, with a torchvision stand-in where needed."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or a CUDA build that cannot load against the CPU torch
        _stand_in_torchvision()
    import denoising_diffusion_pytorch

    return denoising_diffusion_pytorch


def to_images(rows: np.ndarray) -> torch.Tensor:
    """genreg rows (n, 3072), levels 0..255 channels-last, as NCHW float32 in [0, 1]."""
    x = torch.as_tensor(np.asarray(rows, np.float32).reshape(-1, *SHAPE) / 255.0)
    return x.permute(0, 3, 1, 2).contiguous()


def to_rows(images: torch.Tensor) -> np.ndarray:
    """NCHW images in [0, 1] as genreg rows: (n, 3072) float, channels-last, levels 0..255."""
    levels = (images.clamp(0.0, 1.0) * 255.0).round()
    return levels.permute(0, 2, 3, 1).reshape(len(images), -1).numpy().astype(np.float64)


def build(
    peer: types.ModuleType, sample_steps: int, dim: int = 32, dim_mults: tuple[int, ...] = (1, 2, 2)
) -> torch.nn.Module:
    """The peer's Unet and GaussianDiffusion, sized for a CPU (the rest at the library's defaults)."""
    unet = peer.Unet(dim=dim, dim_mults=dim_mults, channels=3)
    return peer.GaussianDiffusion(
        unet,
        image_size=SHAPE[0],
        timesteps=1000,
        sampling_timesteps=sample_steps,  # < timesteps: DDIM (eta 0); == timesteps: ancestral
    )


def train(
    diffusion: torch.nn.Module,
    images: torch.Tensor,
    budget: float,
    *,
    batch: int,
    lr: float,
    seed: int,
    ema: Any | None,
) -> dict[str, float]:
    """Steps of AdamW on random batches until ``budget`` seconds have passed."""
    opt = torch.optim.AdamW(diffusion.parameters(), lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    diffusion.train()
    start = time.perf_counter()
    first = start  # the end of the first step (its one-off set-up costs left out of the steady rate)
    while time.perf_counter() - start < budget:
        idx = torch.as_tensor(rng.integers(0, len(images), batch))
        loss = diffusion(images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update()
        losses.append(float(loss.detach()))
        if len(losses) == 1:
            first = time.perf_counter()
    seconds = time.perf_counter() - start
    steps = len(losses)
    return {
        "steps": steps,
        "seconds": seconds,
        "images_per_s": steps * batch / seconds if seconds > 0 else 0.0,
        "first_step_s": first - start,
        "steady_images_per_s": (steps - 1) * batch / (start + seconds - first) if steps > 1 else float("nan"),
        "final_loss": float(np.mean(losses[-LOSS_WINDOW:])) if losses else float("nan"),
        "last_loss": losses[-1] if losses else float("nan"),
    }


def sample(diffusion: torch.nn.Module, n: int, batch: int, seed: int) -> tuple[np.ndarray, float]:
    """n samples as genreg rows, and the seconds they took."""
    torch.manual_seed(seed)
    diffusion.eval()
    parts = []
    start = time.perf_counter()
    for lo in range(0, n, batch):
        parts.append(to_rows(diffusion.sample(batch_size=min(batch, n - lo))))
    return np.concatenate(parts), time.perf_counter() - start


def compare(sets: dict[str, np.ndarray], test: np.ndarray, seed: int) -> list[str]:
    """C2ST and MMD of each sample set against as many test rows (genreg's two-sample tests).

    The test rows are a seeded random subset (the same for sets of one size): the split's rows
    are patches in scan order, so its first n rows would be neighbouring, overlapping patches
    of one part of one photograph."""
    rows = [
        "| samples | rows | C2ST accuracy (k-NN) | C2ST p | MMD^2 | MMD p |",
        "|---|---|---|---|---|---|",
    ]
    order = np.random.default_rng(seed).permutation(len(test))
    for name, x in sets.items():
        n = min(len(x), len(test))
        real, fake = test[order[:n]].astype(np.float64), np.asarray(x[:n], np.float64)
        c, m = c2st(real, fake, seed=seed), mmd_test(real, fake, seed=seed)
        rows.append(
            f"| {name} | {n} | {c['accuracy']:.3f} | {c['p_value']:.3g} | {m['statistic']:.3g} "
            f"| {m['p_value']:.3f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="training wall-clock seconds")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sample-steps", type=int, default=100, help="DDIM steps (1000: ancestral)")
    parser.add_argument("--sample-batch", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema", action="store_true", help="sample from the library Trainer's EMA")
    parser.add_argument("--dim", type=int, default=32, help="the Unet's base width")
    parser.add_argument("--dim-mults", default="1,2,2", help="the Unet's width multipliers a level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", type=Path, default=None, help="another (n, 3072) sample array")
    parser.add_argument("--reuse", action="store_true", help="load the peer's samples from --out")
    args = parser.parse_args()
    if not 1 <= args.sample_steps <= 1000:
        parser.error("--sample-steps must be in 1..1000")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    torch.set_num_threads(os.cpu_count() or 1)
    data = load_patches_rgb()
    assert data.image_shape == SHAPE

    if args.reuse:
        samples = np.load(args.out)
        print(f"peer samples: {samples.shape} from {args.out}")
    else:
        peer = import_peer()
        from denoising_diffusion_pytorch.version import __version__

        torch.manual_seed(args.seed)
        mults = tuple(int(m) for m in args.dim_mults.split(","))
        diffusion = build(peer, args.sample_steps, args.dim, mults)
        params = sum(p.numel() for p in diffusion.model.parameters())
        print(
            f"denoising-diffusion-pytorch {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(
            f"model: Unet(dim={args.dim}, dim_mults={mults}), {params:,} parameters; GaussianDiffusion "
            f"(T=1000, objective={diffusion.objective}, sampler="
            f"{'DDIM' if diffusion.is_ddim_sampling else 'ancestral'} {args.sample_steps} steps)"
        )
        ema = None
        if args.ema:
            from ema_pytorch import EMA

            ema = EMA(diffusion, beta=0.995, update_every=10)
        images = to_images(data.train)
        stats = train(diffusion, images, args.budget, batch=args.batch, lr=args.lr, seed=args.seed, ema=ema)
        print(
            f"training: {stats['steps']} steps of batch {args.batch} in {stats['seconds']:.1f} s, "
            f"{stats['images_per_s']:.1f} images/s ({stats['steady_images_per_s']:.1f} after the first step, "
            f"which took {stats['first_step_s']:.1f} s), final loss {stats['final_loss']:.4f} "
            f"(mean of the last {min(LOSS_WINDOW, stats['steps'])} steps; last step {stats['last_loss']:.4f})"
        )
        sampler = ema.ema_model if ema is not None else diffusion
        samples, seconds = sample(sampler, args.samples, args.sample_batch, args.seed + 1)
        print(
            f"sampling ({'EMA' if ema is not None else 'trained'} weights): {args.samples} samples "
            f"at {args.sample_steps} steps in {seconds:.1f} s, {seconds / max(args.samples, 1):.3f} s/sample"
        )
        print(
            f"sample levels: mean {samples.mean():.1f} (test rows {data.test.mean():.1f}), std {samples.std():.1f}"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, samples)
        print(f"saved {samples.shape} {samples.dtype} to {args.out}")

    if args.compare is not None:
        other = np.load(args.compare)
        if other.ndim != 2 or other.shape[1] != samples.shape[1]:
            raise SystemExit(f"{args.compare}: shape {other.shape}, expected (n, {samples.shape[1]})")
        sets = {
            "peer (denoising-diffusion-pytorch)": samples,
            f"other ({args.compare.name})": other,
            "validation rows (reference)": data.validation[
                np.random.default_rng(args.seed + 1).permutation(len(data.validation))
            ][: max(len(samples), len(other))],
        }
        if min(len(samples), len(other)) < 10:
            raise SystemExit("C2ST needs at least 10 rows a sample")
        print(f"\nTwo-sample tests against the test split ({len(data.test)} rows; each set against as many):")
        print("\n".join(compare(sets, data.test, args.seed)))


if __name__ == "__main__":
    main()
