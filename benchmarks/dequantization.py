"""Uniform vs variational dequantisation: the same flow, the same budget, the served bounds.

For each data set, trains the flow with ``dequantization=uniform`` and ``=variational``
(identical flow architecture, the same epoch cap and the same wall-time budget), stores both
through the normal pipeline (ONNX export, parity check) and scores the test split with the
exported scorer in ONNX Runtime: k = 1 (the plain bound) and k = 16 (importance-weighted),
in bits/dim with the standard error over rows. Also reports KL(pi || p) of the default
(spline) and affine flows on 8gaussians.

Run: .venv/bin/python benchmarks/dequantization.py [--data digits patches] [--budget 300]
Uses a private, temporary model store. Results go in benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genreg-bench-")

import torch

from registry.data import load_dataset
from registry.family import TrainControl
from registry.inference import LoadedModel, bound_estimates
from registry.pipeline import train_and_store
from registry.plugins import get_plugins
from registry.units import score_summary

# Per data set (early stopping on validation may end a run sooner). Patches have 4.7 times
# the rows of digits: larger batches keep an epoch affordable on 2 cores.
OPTIONS = {"digits": {"epochs": 150}, "patches": {"epochs": 100, "batch_size": 256}}


def bound_row(data_name: str, dequantization: str, args: argparse.Namespace) -> str:
    fam = get_plugins().get("flow")
    data = load_dataset(data_name)
    config = fam.Config(dequantization=dequantization, **OPTIONS.get(data_name, {"epochs": 100}))
    control = TrainControl(seed=args.seed, progress=False, time_budget=args.budget)
    start = time.monotonic()
    stored = train_and_store(fam, data, config, control, name=f"flow-{data_name}-{dequantization}")
    wall = time.monotonic() - start
    loaded = LoadedModel(stored, providers=["CPUExecutionProvider"])
    elbo, iw = bound_estimates(loaded.log_weights(data.test, seed=args.seed, k=16))
    k1 = score_summary(elbo, data.dim)
    k16 = score_summary(iw, data.dim)
    fit = stored.meta["train"]
    return (
        f"| {data_name} | {dequantization} | {fit['epochs']} ({fit['stopped']}) | {fit['seconds']:.0f} | "
        f"{wall:.0f} | {k1['mean_bits_per_dim']:.4f} ± {k1['stderr_bits_per_dim']:.4f} | "
        f"{k16['mean_bits_per_dim']:.4f} ± {k16['stderr_bits_per_dim']:.4f} |"
    )


def toy_row(coupling: str, args: argparse.Namespace) -> str:
    fam = get_plugins().get("flow")
    stored = train_and_store(
        fam,
        load_dataset("8gaussians"),
        fam.Config(coupling=coupling),
        TrainControl(seed=args.seed, progress=False),
        name=f"flow-8gaussians-{coupling}",
    )
    test, fit = stored.metrics["test"], stored.meta["train"]
    return f"| 8gaussians | {coupling} | {fit['epochs']} | {fit['seconds']:.0f} | {test['kl']:.4f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=["digits", "patches"])
    parser.add_argument("--budget", type=float, default=300.0, help="wall seconds per training run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-toy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for data_name in args.data:
        for dequantization in ("uniform", "variational"):
            rows.append(bound_row(data_name, dequantization, args))
            print(rows[-1], flush=True)
    print(f"\ntorch threads {torch.get_num_threads()}, budget {args.budget:.0f} s per run, seed {args.seed}")
    print(
        "| data | dequantization | epochs (stop) | train s | train+export+eval s | "
        "test bits/dim k=1 | test bits/dim k=16 (IW) |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if not args.skip_toy:
        toy = [toy_row(c, args) for c in ("spline", "affine")]
        print("\n| data | coupling | epochs | train s | KL(pi‖p) nats |\n|---|---|---|---|---|")
        print("\n".join(toy))


if __name__ == "__main__":
    main()
