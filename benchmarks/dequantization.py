"""Uniform vs variational dequantisation: the same flow, the same budget, the served bounds.

For each data set, trains the flow with ``dequantization=uniform`` and ``=variational``
(identical flow architecture, the same epoch cap and the same wall-time budget), exports both
to ONNX through the family's exporter (the parity check included) and scores the test split
with the exported scorer in ONNX Runtime, as the service does: k = 1 (the plain bound) and
k = 16 (importance-weighted), in bits/dim with the standard error over rows. Also reports
KL(pi || p) of the spline (default) and affine flows on 8gaussians.

Run: .venv/bin/python benchmarks/dequantization.py [--data digits patches] [--budget 420]
     [--device cuda --parallel]   # e.g. on a GPU machine: every run at once, one process each
Needs torch and onnxruntime, not bentoml (nothing is stored). Results go in
benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Per data set (early stopping on validation may end a run sooner). Patches have 4.7 times
# the rows of digits: larger batches keep an epoch affordable on 2 cores.
OPTIONS = {"digits": {"epochs": 150}, "patches": {"epochs": 100, "batch_size": 256}}
TOY_COUPLINGS = ("spline", "affine")


def one_run(data_name: str, variant: str, budget: float, device: str, seed: int) -> dict:
    """Train, export, parity-check and score one configuration; a dict of its figures."""
    import torch

    from plugins.flow.family import FlowFamily
    from registry.contract.family import TrainControl
    from registry.datasets import load_dataset
    from registry.pipeline.export import check_parity
    from registry.runtime.models import LoadedModel
    from registry.runtime.scoring import bound_estimates, score
    from registry.runtime.store import StoredModel
    from registry.runtime.units import score_summary

    torch.set_num_threads(1 if device == "cuda" else (os.cpu_count() or 1))
    fam = FlowFamily()
    data = load_dataset(data_name)
    toy = not data.discrete
    options = {"coupling": variant} if toy else {"dequantization": variant, **OPTIONS.get(data_name, {})}
    control = TrainControl(seed=seed, progress=False, time_budget=None if toy else budget, device=device)
    start = time.monotonic()
    model = fam.train(data, fam.Config(**options), control)
    with tempfile.TemporaryDirectory() as tmp:
        graphs = fam.export(model, Path(tmp))
        parity = check_parity(fam, model, graphs, Path(tmp), data.test, discrete=data.discrete)
        meta = {
            "family": "flow",
            "capabilities": sorted(c.value for c in fam.model_capabilities(model)),
            "data": data.describe(),
            "graphs": [g.model_dump(mode="json") for g in graphs],
        }
        loaded = LoadedModel(StoredModel("bench", "0", Path(tmp), meta), providers=["CPUExecutionProvider"])
        out = {"data": data_name, "variant": variant, "fit": model.fit, "parity": max(parity.values())}
        if toy:
            logp = score(loaded, data.test, "log_prob").scores
            out["kl"] = float((data.log_density(data.test.astype("float64")) - logp).mean())
        else:
            elbo, iw = bound_estimates(loaded.log_weights(data.test, seed=seed, k=16))
            out["k1"] = score_summary(elbo, data.dim)
            out["k16"] = score_summary(iw, data.dim)
    out["wall"] = time.monotonic() - start
    return out


def bound_row(r: dict) -> str:
    fit, k1, k16 = r["fit"], r["k1"], r["k16"]
    return (
        f"| {r['data']} | {r['variant']} | {fit['epochs']} ({fit['stopped']}) | {fit['seconds']:.0f} | "
        f"{r['wall']:.0f} | {k1['mean_bits_per_dim']:.4f} ± {k1['stderr_bits_per_dim']:.4f} | "
        f"{k16['mean_bits_per_dim']:.4f} ± {k16['stderr_bits_per_dim']:.4f} | {r['parity']:.1g} |"
    )


def toy_row(r: dict) -> str:
    fit = r["fit"]
    return f"| 8gaussians | {r['variant']} | {fit['epochs']} ({fit['stopped']}) | {fit['seconds']:.0f} | {r['kl']:.4f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", nargs="+", default=["digits", "patches"])
    parser.add_argument("--budget", type=float, default=420.0, help="wall seconds per training run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", action="store_true", help="one process per run, all at once")
    parser.add_argument("--skip-toy", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("DATA", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(*args.one, args.budget, args.device, args.seed)), flush=True)
        return
    runs = [(d, v) for d in args.data for v in ("uniform", "variational")]
    if not args.skip_toy:
        runs += [("8gaussians", c) for c in TOY_COUPLINGS]
    if args.parallel:
        common = ["--budget", str(args.budget), "--device", args.device, "--seed", str(args.seed)]
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--one", d, v, *common], stdout=subprocess.PIPE, text=True
            )
            for d, v in runs
        ]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    else:
        results = []
        for d, v in runs:
            results.append(one_run(d, v, args.budget, args.device, args.seed))
            print(json.dumps(results[-1]), flush=True)
    mode = "in parallel, one process each" if args.parallel else "one after another"
    print(f"\ndevice {args.device}, {os.cpu_count()} cores, runs {mode}; budget {args.budget:.0f} s per run")
    print(
        "| data | dequantization | epochs (stop) | train s | total s | test bits/dim k=1 | "
        "test bits/dim k=16 (IW) | parity |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(bound_row(r) for r in results if "k1" in r))
    toys = [r for r in results if "kl" in r]
    if toys:
        print("\n| data | coupling | epochs (stop) | train s | KL(pi‖p) nats |\n|---|---|---|---|---|")
        print("\n".join(toy_row(r) for r in toys))


if __name__ == "__main__":
    main()
