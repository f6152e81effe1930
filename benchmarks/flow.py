"""Train the flow (default options) on digits and every 2-D toy; print quality, time, parity.

Run: .venv/bin/python benchmarks/flow.py [--data digits 8gaussians ...]
Uses a private, temporary model store. Results go in benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genreg-bench-")

import torch

from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import BUILTIN_DATASETS, load_dataset
from registry.pipeline.train import train_and_store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=list(BUILTIN_DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    plugins = get_plugins()
    rows = []
    for data_name in args.data:
        data = load_dataset(data_name)
        families = ["flow", "gaussian"] + (["categorical"] if data.discrete else [])
        for family in families:
            fam = plugins.get(family)
            stored = train_and_store(fam, data, fam.Config(), TrainControl(seed=args.seed, progress=False))
            test = stored.metrics["test"]
            parity = max(
                (v for k, v in stored.meta["parity"].items() if k.startswith("scorer")), default=math.nan
            )
            row = (
                f"| {family} | {data_name} | {test['kind']} | {test['bits_per_dim']:.4f} | "
                f"{test.get('kl', math.nan):.4f} | {stored.meta['train']['seconds']:.1f} | "
                f"{stored.meta['train'].get('epochs', '-')} | {parity:.2g} |"
            )
            print(row, flush=True)
            rows.append(row)
    print()
    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}")
    print(
        "| family | data | kind | test bits/dim | KL(data‖model) nats | train s | epochs | max scorer parity err |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
