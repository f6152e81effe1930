"""GAN on 8gaussians and digits with both generator losses: C2ST, MMD and the JSD estimate.

Run: .venv/bin/python benchmarks/gan.py [--epochs N]
Each run's metrics come from the test split against as many samples (registry.pipeline.train).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genreg-bench-gan-")

import torch

from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import load_dataset
from registry.pipeline.train import train_and_store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=["8gaussians", "digits"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    gan = get_plugins().get("gan")
    print(
        "| data | generator loss | C2ST accuracy (k-NN) | C2ST p | MMD^2 | MMD p | V(G,D) | JSD >= | best epoch | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data_name in args.data:
        data = load_dataset(data_name)
        for loss in ("non-saturating", "minimax"):
            stored = train_and_store(
                gan,
                data,
                gan.Config(loss=loss),
                TrainControl(seed=args.seed, epochs=args.epochs, progress=False),
                name=f"gan-{data_name}-{loss}",
            )
            t = stored.metrics["test"]["two_sample"]
            print(
                f"| {data_name} | {loss} | {t['c2st']['accuracy']:.3f} | {t['c2st']['p_value']:.2g} | "
                f"{t['mmd']['statistic']:.4f} | {t['mmd']['p_value']:.3f} | {t['jsd']['value']:.4f} | "
                f"{t['jsd']['jsd_lower_bound']:.4f} | {stored.meta['train']['best_epoch']} | "
                f"{stored.meta['train']['seconds']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
