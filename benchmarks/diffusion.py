"""The diffusion family: its bound in bits/dim, its samples, and sampling speed against steps.

Measured in one run on this machine:
(a) quality: `genreg train diffusion` on digits (time budget --budget) with the default options
    and the choices it was measured against (a plain noise prediction; an MLP), and on
    8gaussians; test bound in bits/dim through the served scorer (the average of 4 draws per
    row), k-NN C2ST accuracy and MMD p-value of samples against the test split, KL on the toy;
(b) the bound is a bound: on 8gaussians the served exp(bound) summed over a grid (the Monte
    Carlo average of --grid-draws draws per point, and the same corrected for the upward bias
    of exp of a noisy mean) is at most 1, and the gap is -log of it;
(c) the step count: C2ST and MMD of digits sampled with 10 to 250 steps (the default's basis);
(d) speed: /sample of 64 digits over HTTP (the real server) with 10, 50 and 250 steps; the
    serving runtime's loop (ONNX Runtime) against a PyTorch eager loop of the same model and
    noise at the default step count, interleaved in 1-s slices.

Run: .venv/bin/python benchmarks/diffusion.py [--budget 150] [--store DIR] [--skip-variants]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steploop import loop_against_eager, rate, rebuilt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

VARIANTS = [
    ("diffusion-digits", "digits", []),
    ("diffusion-digits-epsilon", "digits", ["predict=epsilon"]),
    ("diffusion-digits-mlp", "digits", ["network=mlp"]),
    ("diffusion-digits-naive", "digits", ["predict=epsilon", "network=mlp"]),
    ("diffusion-8gaussians", "8gaussians", []),
]


def train(name: str, data: str, budget: float, options: list[str]) -> float:
    cmd = [sys.executable, "-m", "registry.cli", "train", "diffusion", "--data", data, "--name", name]
    cmd += ["--time-budget", str(budget), "--quiet", *[a for o in options for a in ("-o", o)]]
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def quality(budget: float, variants: bool) -> list[str]:
    from registry.runtime.store import get_model

    rows = [
        "| model | options | test bits/dim (bound, stored) | the same, 16 draws | C2ST acc | MMD p | KL nats "
        "| epochs (best) | train s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, data, options in VARIANTS if variants else [VARIANTS[0], VARIANTS[-1]]:
        wall = train(name, data, budget, options)
        stored = get_model(name)
        test, fit = stored.metrics["test"], stored.meta["train"]
        precise = precise_bound(stored, data)
        two = test["two_sample"]
        kl = f"{test['kl']:.4f}" if "kl" in test else ""
        rows.append(
            f"| {name} | {' '.join(options) or 'defaults'} | {test['bits_per_dim']:.4f} | {precise} "
            f"| {two['c2st']['accuracy']:.3f} | {two['mmd']['p_value']:.3f} | {kl} "
            f"| {fit.get('epochs')} ({fit.get('best_epoch')}) | {fit['seconds']:.0f} | {wall:.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def precise_bound(stored, data: str, draws: int = 16) -> str:
    """The test bound through the served scorer with ``draws`` draws per row (each of
    score_strata steps): the stored figure's 4 draws can miss the rare steps whose loss is
    large, which a heavier sample of steps finds (mean +- standard error)."""
    import numpy as np

    from registry.datasets import load_dataset
    from registry.runtime.models import LoadedModel
    from registry.runtime.scoring import score

    loaded = LoadedModel(stored, providers=["CPUExecutionProvider"])
    test = load_dataset(data).test[:2000]
    result = score(loaded, test, "bound", k=draws, seed=11)
    bpd = result.bits_per_dim
    return f"{np.mean(bpd):.4f} +- {np.std(bpd) / np.sqrt(len(bpd)):.4f}"


def grid_integral(draws: int, width: int) -> list[str]:
    """sum over a grid of exp(served bound) x cell area, on 8gaussians (a density: at most 1)."""
    import numpy as np

    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    loaded = LoadedModel(get_model("diffusion-8gaussians"), providers=["CPUExecutionProvider"])
    edge = 4.5
    axis = np.linspace(-edge, edge, width)
    cell = (axis[1] - axis[0]) ** 2
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2).astype(np.float32)
    start = time.monotonic()
    log_w = np.concatenate(
        [loaded.log_weights(grid[i : i + 512], seed=i, k=draws) for i in range(0, len(grid), 512)]
    )
    mean = log_w.mean(1)
    # exp of a noisy mean is biased upward by about exp(var / 2k): remove it (delta method).
    corrected = mean - log_w.var(1, ddof=1) / (2 * draws)
    raw, fixed = float(np.exp(mean).sum() * cell), float(np.exp(corrected).sum() * cell)
    spread = float(np.sqrt(np.median(log_w.var(1, ddof=1))))
    return [
        f"8gaussians, grid {width} x {width} over [-{edge}, {edge}]^2, {draws} draws per point "
        f"(each {loaded.stored.graph('scorer', 'bound').noise[0].dim} stratified steps), "
        f"{time.monotonic() - start:.0f} s:",
        f"- sum exp(mean of draws) x area = {raw:.4f} (gap {-math.log(raw):.4f} nats)",
        f"- the same, corrected for exp of a noisy mean = {fixed:.4f} (gap {-math.log(fixed):.4f} nats)",
        f"- median standard deviation of one draw: {spread:.2f} nats",
    ]


def steps_quality(counts: tuple[int, ...] = (10, 25, 50, 100, 250), seeds: int = 3) -> list[str]:
    """k-NN C2ST accuracy and MMD p-value of digits sampled with each step count (the test
    split against as many samples, mean over seeds): what the default count was chosen by."""
    import numpy as np

    from registry.datasets import load_dataset
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model
    from registry.runtime.two_sample import c2st, mmd_test

    test = load_dataset("digits").test.astype(np.float64)
    loaded = LoadedModel(get_model("diffusion-digits"), providers=["CPUExecutionProvider"])
    lines = [
        "| steps | C2ST accuracy (mean of seeds) | per seed | MMD p per seed | s per draw of 269 |",
        "|---|---|---|---|---|",
    ]
    for count in counts:
        start, accs, ps = time.monotonic(), [], []
        for seed in range(seeds):
            fake = loaded.sample(len(test), seed=seed, steps=count).astype(np.float64)
            accs.append(c2st(test, fake, seed=seed)["accuracy"])
            ps.append(mmd_test(test, fake, seed=seed)["p_value"])
        per = (time.monotonic() - start) / seeds
        lines.append(
            f"| {count} | {np.mean(accs):.3f} | {', '.join(f'{a:.3f}' for a in accs)} "
            f"| {', '.join(f'{p:.3f}' for p in ps)} | {per:.1f} |"
        )
        print(lines[-1], flush=True)
    return lines


def speed(seconds: float) -> list[str]:
    import httpx
    import torch
    from servers import running_server

    from plugins.diffusion.config import DiffusionConfig, DiffusionModel
    from plugins.diffusion.train import build
    from registry.contract.loading import get_plugins
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    torch.set_num_threads(1)  # as the service's ONNX Runtime sessions (GENREG_ORT_THREADS=1)
    stored = get_model("diffusion-digits")
    loaded = LoadedModel(stored, providers=["CPUExecutionProvider"], threads=1)
    config = DiffusionConfig(**stored.meta["config"])
    from registry.runtime.images import image_shape

    shape = image_shape(stored.data["image_shape"])
    net = rebuilt(stored, build(stored.data["dim"], stored.data["levels"], config, shape))
    model = DiffusionModel(config, net, stored.data["dim"], stored.data["levels"], {}, shape)
    lines = loop_against_eager(loaded, get_plugins().get("diffusion"), model, seconds, "digits")
    lines += ["", "| /sample, n = 64 digits over HTTP | ms per request | ms per step |", "|---|---|---|"]
    log = Path(tempfile.mkdtemp(prefix="genreg-bench-diffusion-")) / "server.log"
    with (
        running_server(log, GENREG_MODELS="diffusion-digits") as server,
        httpx.Client(base_url=server.base, timeout=120) as client,
    ):
        for count in (10, 50, 250):
            body = {"model": "diffusion-digits", "n": 64, "seed": 0, "steps": count}
            client.post("/sample", json=body).raise_for_status()
            per = 1.0 / rate(lambda body=body: client.post("/sample", json=body).raise_for_status(), seconds)
            lines.append(f"| {count} steps | {per * 1e3:.1f} | {per * 1e3 / count:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=150, help="training time budget per model, seconds")
    parser.add_argument("--seconds", type=float, default=5, help="slices of the speed measures")
    parser.add_argument("--skip-variants", action="store_true", help="train the defaults only")
    parser.add_argument("--grid", type=int, default=100, help="grid points per axis")
    parser.add_argument("--grid-draws", type=int, default=64, help="bound draws per grid point")
    parser.add_argument("--store", help="a BENTOML_HOME holding the models: skip training")
    args = parser.parse_args()
    os.environ["BENTOML_HOME"] = args.store or tempfile.mkdtemp(prefix="genreg-bench-diffusion-")
    print(f"cpu count {os.cpu_count()}\n")
    if not args.store:
        print("\n".join(quality(args.budget, not args.skip_variants)), "\n", flush=True)
    print("\n".join(grid_integral(args.grid_draws, args.grid)), "\n", flush=True)
    print("\n".join(steps_quality()), "\n", flush=True)
    print("\n".join(speed(args.seconds)))


if __name__ == "__main__":
    main()
