"""The latent space, measured: disentanglement you can see, reconstructions, round trips.

1. beta = 1 and beta = 4 VAEs on `shapes` (latent 10). Factor classifiers (scikit-learn's
   logistic regression, one per factor: shape, scale, x, y) are fitted on the real shapes'
   train split. For each of a model's top dimensions (by KL(q(z_i|x)||p(z_i)) on the
   validation split, as `genreg traverse` orders them), every test image's code is traversed
   over the data's range of that dimension (9 values from the 2.5% to the 97.5% quantile of
   the test codes, the others kept), decoded (E[x|z]) and classified. A factor's change
   along a traversal is the total variation between the classifier's class probabilities at
   consecutive values, summed; its share is its change over all factors' changes. The
   measure's ceiling is printed first: each factor's own share along ideal traversals (real
   shapes redrawn with one factor varied), what a perfectly disentangled generator would score.
   The traversal grids (`genreg traverse`) are written to docs/latent/.
2. The digits VAE's reconstruction through its mean decoder (mean absolute error in levels,
   MSE, and the reconstruction term -E_q log p(x|z) in bits/dim), and the flows' round trips
   (8gaussians: relative error on 10,000 rows; digits: decode(encode(x)) against x + u).

Everything goes through the runtime's one latent path (registry.runtime.latent), on ONNX
Runtime, as the service answers /encode and /decode.

Run: .venv/bin/python benchmarks/latent.py [--betas 1 4] [--configs broadcast:16 broadcast:16:tc] [--top 3] [--docs docs/latent]
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

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="genreg-bench-latent-"))

import numpy as np
import torch

from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import load_dataset
from registry.pipeline.train import train_and_store
from registry.runtime import latent
from registry.runtime.models import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
STEPS = 9  # values per traversal


def features(images: np.ndarray) -> np.ndarray:
    """What a factor classifier sees: the image moved so its centre of mass is at the middle
    (shape and scale do not depend on where it is), that centre, the ink's total, and the ink's
    column and row profiles (where it is). On raw pixels a linear classifier cannot tell a
    shape apart wherever it lies (0.26 test accuracy on shape, below chance)."""
    side = math.isqrt(images.shape[1])
    img = np.clip(images, 0, None).reshape(-1, side, side)
    mass = img.sum((1, 2)) + 1e-9
    yy, xx = np.mgrid[0:side, 0:side]
    cy, cx = (img * yy).sum((1, 2)) / mass, (img * xx).sum((1, 2)) / mass
    centred = np.stack(
        [
            np.roll(im, (round(side / 2 - y), round(side / 2 - x)), (0, 1))
            for im, y, x in zip(img, cy, cx, strict=True)
        ]
    )
    return np.column_stack([centred.reshape(len(img), -1), cx, cy, mass, img.sum(1), img.sum(2)])


class FactorClassifier:
    """Logistic regression on :func:`features`: p(factor class | image)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0))
        self.model.fit(features(images), labels)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(features(images))

    def score(self, images: np.ndarray, labels: np.ndarray) -> float:
        return float(self.model.score(features(images), labels))


def factor_classifiers(shapes) -> tuple[list, dict[str, float]]:
    """One classifier per factor fitted on the real train split; test accuracy of each."""
    fitted, accuracy = [], {}
    for j, name in enumerate(shapes.factor_names):
        clf = FactorClassifier(shapes.train, shapes.factors["train"][:, j])
        accuracy[name] = round(clf.score(shapes.test, shapes.factors["test"][:, j]), 3)
        fitted.append(clf)
    return fitted, accuracy


def change_along(clf, seqs: np.ndarray) -> float:
    """A factor's mean change along traversals ``seqs`` (traversals, steps, values): the total
    variation between its class probabilities at consecutive steps, summed."""
    p = clf.predict_proba(seqs.reshape(-1, seqs.shape[-1])).reshape(*seqs.shape[:2], -1)
    return float((0.5 * np.abs(np.diff(p, axis=1)).sum(-1)).sum(1).mean())


def ideal_shares(shapes, classifiers: list) -> list[float]:
    """The measure's ceiling: each factor's own share of the change along ideal traversals (every
    test image redrawn at each value of one factor, the others kept), as :func:`changes` reads a
    model's. What falls short of 100% is the classifiers' own cross-talk."""
    from registry.datasets.shapes import POSITIONS, SCALES, SHAPES, draw

    values = (SHAPES, SCALES, POSITIONS, POSITIONS)
    own = []
    for j in range(len(values)):
        rows = []
        for factors in shapes.factors["test"]:
            f = [values[i][k] for i, k in enumerate(factors)]
            for v in values[j]:
                f[j] = v
                rows.append(draw(*f).ravel())
        seqs = np.asarray(rows, np.float32).reshape(len(shapes.factors["test"]), len(values[j]), -1)
        change = [change_along(clf, seqs) for clf in classifiers]
        own.append(float(change[j] / sum(change)))
    return own


def changes(loaded: LoadedModel, dim: int, codes: np.ndarray, classifiers: list) -> np.ndarray:
    """Each factor's mean change (summed total variation) along traversals of ``dim`` over the
    data's own range of it (the 2.5% to 97.5% quantiles of its codes): past that range the
    decoder draws shapes no real image has (a square of half-width 7), on which the factor
    classifiers guess, so a scale traversal over -3..3 read as 28% position."""
    values = np.quantile(codes[:, dim], np.linspace(0.025, 0.975, STEPS)).astype(np.float32)
    grid = np.concatenate([latent.traversal(z, [dim], values) for z in codes])
    decoded = latent.decode(loaded, latent.check_decode(loaded, grid, None), seed=0)
    seqs = decoded.reshape(len(codes), len(values), -1)
    return np.asarray([change_along(clf, seqs) for clf in classifiers])


def disentanglement(args, plugins, shapes, classifiers) -> None:
    vae = plugins.get("vae")
    names = shapes.factor_names
    print(
        "| beta | arch | batch | MIG | active units | dim | KL (nats) | changes most | its share | "
        + " | ".join(names)
        + " |"
    )
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(names))
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    runs = [((c + ":kl").split(":")[:3], b) for c in args.configs for b in args.betas]
    for (arch, batch, penalty), beta in runs:
        tag = f"{arch}-batch{batch}" + ("-tc" if penalty == "tc" else "")
        stored = train_and_store(
            vae,
            shapes,
            vae.Config(beta=beta, latent=args.latent, batch_size=int(batch), arch=arch, penalty=penalty),
            TrainControl(seed=args.seed, progress=False),
            name=f"vae-shapes-beta{beta:g}-{tag}",
        )
        loaded = LoadedModel(stored)
        report = stored.metrics["test"]["latent"]
        order = latent.traversal_order(loaded)
        codes = latent.encode(loaded, latent.check_encode(loaded, shapes.test, None), seed=0).z
        for rank, dim in enumerate(order[: args.top]):
            change = changes(loaded, dim, codes, classifiers)
            share = change / max(change.sum(), 1e-12)
            best = int(np.argmax(share))
            head = (
                f"| {beta:g} | {arch}{' tc' if penalty == 'tc' else ''} | {batch} | {stored.metrics['test']['mig']['mig']:.3f} | "
                f"{report['active_units']}"
                if rank == 0
                else "| | | | |"
            )
            print(
                f"{head} | z{dim} | {report['kl_per_dim'][dim]:.2f} | {names[best]} | {share[best]:.0%} | "
                + " | ".join(f"{s:.0%}" for s in share)
                + " |",
                flush=True,
            )
        out = docs / f"shapes-beta{beta:g}-{tag}-traversal.png"
        env = dict(os.environ)
        subprocess.run(
            [sys.executable, "-m", "registry.cli", "traverse", stored.tag, "--out", str(out), "--row", "70"],
            check=True,
            env=env,
            cwd=ROOT,
            capture_output=True,
        )


def reconstruction_and_round_trips(args, plugins) -> None:
    digits = load_dataset("digits")
    print()
    print("| model | check | value |")
    print("|---|---|---|")
    vae = train_and_store(
        plugins.get("vae"), digits, plugins.get("vae").Config(), TrainControl(seed=args.seed, progress=False)
    )
    loaded = LoadedModel(vae)
    x = digits.test
    z = latent.encode(loaded, latent.check_encode(loaded, x, None), seed=0).z
    rec = latent.decode(loaded, latent.check_decode(loaded, z, None), seed=0)
    recon_nats = -vae.metrics["test"]["surgery"]["reconstruction"]
    print(
        f"| vae-digits | mean-decoder reconstruction: mean abs error (levels 0..16) | {np.abs(rec - x).mean():.3f} |"
    )
    print(f"| vae-digits | mean-decoder reconstruction: MSE | {((rec - x) ** 2).mean():.3f} |")
    print(
        f"| vae-digits | reconstruction term -E_q log p(x|z) | {recon_nats:.2f} nats = "
        f"{recon_nats / (digits.dim * math.log(2)):.4f} bits/dim |"
    )
    print(f"| vae-digits | active units (of {len(z[0])}) | {vae.metrics['test']['latent']['active_units']} |")
    out = Path(args.docs) / "digits-interpolation.png"
    np.save(Path(tempfile.gettempdir()) / "genreg-interp.npy", x[:2])
    subprocess.run(
        [sys.executable, "-m", "registry.cli", "interpolate", vae.tag, "--rows",
         str(Path(tempfile.gettempdir()) / "genreg-interp.npy"), "--out", str(out)],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    flow = plugins.get("flow")
    for data_name, epochs in (("8gaussians", 12), ("digits", 40)):
        data = load_dataset(data_name)
        stored = train_and_store(
            flow, data, flow.Config(), TrainControl(seed=args.seed, epochs=epochs, progress=False)
        )
        loaded = LoadedModel(stored)
        rows = np.concatenate([data.train, data.test])[:10_000]
        start = time.perf_counter()
        enc = latent.encode(loaded, latent.check_encode(loaded, rows, None), seed=0)
        back = latent.decode(loaded, latent.check_decode(loaded, enc.z, None), seed=0)
        seconds = time.perf_counter() - start
        target = enc.dequantized if enc.dequantized is not None else rows
        rel = np.abs(back - target) / np.maximum(np.abs(target), 1.0)
        what = "decode(encode(x)) vs x + u" if enc.dequantized is not None else "decode(encode(x)) vs x"
        print(
            f"| flow-{data_name} | {what}, {len(rows):,} rows: max relative error | {rel.max():.2e} "
            f"({seconds * 1000:.0f} ms both ways) |"
        )
        if enc.dequantized is not None:
            print(
                f"| flow-{data_name} | floor(decode(encode(x))) = x | {np.mean(np.floor(back) == rows):.6f} of values |"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--betas", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--latent", type=int, default=10)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["mlp:64", "mlp:8", "conv:64", "broadcast:16", "broadcast:16:tc"],
        help="ARCH:BATCH[:PENALTY] per run, each at every beta (mlp:64 is the VAE's default; "
        "broadcast: conv's encoder with the spatial-broadcast decoder; PENALTY tc: beta weighs "
        "only the total correlation, beta-TCVAE)",
    )
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--no-round-trips", action="store_true", help="the disentanglement table only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", default=str(ROOT / "docs" / "latent"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    plugins = get_plugins()
    shapes = load_dataset("shapes")
    classifiers, accuracy = factor_classifiers(shapes)
    print("factor classifiers (logistic regression on real shapes), test accuracy:", accuracy)
    ceiling = ideal_shares(shapes, classifiers)
    print(
        "each factor's own share along ideal traversals (the measure's ceiling):",
        {name: f"{v:.0%}" for name, v in zip(shapes.factor_names, ceiling, strict=True)},
    )
    print()
    disentanglement(args, plugins, shapes, classifiers)
    if not args.no_round_trips:
        reconstruction_and_round_trips(args, plugins)


if __name__ == "__main__":
    main()
