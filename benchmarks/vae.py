"""beta-VAE sweep on `shapes` (known factors) and the VAE's digits bounds beside the flow's.

Prints, per beta: reconstruction, I_q[x,z], KL(q(z)||p(z)) (ELBO surgery on the test split),
the ELBO, and MIG over all 972 images. Then the digits test bits/dim of the VAE (ELBO and
IWAE with k = 64) and of the flow, trained in the same run.

Run: .venv/bin/python benchmarks/vae.py [--betas 1 2 4 8] [--epochs 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genreg-bench-vae-")

import torch

from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import load_dataset
from registry.pipeline.train import train_and_store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--betas", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--latent", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    plugins = get_plugins()
    vae = plugins.get("vae")
    shapes = load_dataset("shapes")
    print(
        "| beta | reconstruction | I_q[x,z] | KL(q(z)‖p(z)) | KL(q(z|x)‖p) | ELBO (beta=1) | ELBO_beta | MIG | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for beta in args.betas:
        stored = train_and_store(
            vae,
            shapes,
            vae.Config(beta=beta, latent=args.latent),
            TrainControl(seed=args.seed, epochs=args.epochs, progress=False),
            name=f"vae-shapes-beta{beta:g}",
        )
        m = stored.metrics["test"]
        s = m["surgery"]
        print(
            f"| {beta:g} | {s['reconstruction']:.2f} | {s['mutual_information']:.2f} | {s['marginal_kl']:.2f} | "
            f"{s['kl_posterior_prior']:.2f} | {s['elbo']:.2f} | {s['elbo_beta']:.2f} | {m['mig']['mig']:.3f} | "
            f"{stored.meta['train']['seconds']:.0f} |",
            flush=True,
        )
    digits = load_dataset("digits")
    print()
    print("| digits test | bits/dim (bound) | IWAE k=64 bits/dim | train s |")
    print("|---|---|---|---|")
    for family in ("vae", "flow"):
        fam = plugins.get(family)
        stored = train_and_store(fam, digits, fam.Config(), TrainControl(seed=args.seed, progress=False))
        m = stored.metrics["test"]
        print(
            f"| {family} | {m['bits_per_dim']:.4f} | {m.get('iwae64_bits_per_dim', float('nan')):.4f} | "
            f"{stored.meta['train']['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
