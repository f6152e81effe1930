"""Classifier-free guidance: what the guidance scale w does to a conditional diffusion's samples.

A conditional diffusion on digits (`load_dataset("digits", conditional=True)`), trained with
label dropout, samples 100 rows of each digit 0..9 (1,000 rows) at each scale w (0: the
unconditional model, 1: the conditional one, > 1: guided). For each w:
  - label accuracy: a scikit-learn LogisticRegression fitted on the real training split says
    which digit each sample is; the share that is the digit asked for (chance: 0.10; the same
    classifier on the real test split is the ceiling, printed first);
  - C2ST: the runtime's k-NN classifier two-sample test (registry.runtime.two_sample.c2st) of
    the samples against the real test rows (accuracy 0.5: indistinguishable; 1: apart). The test
    rows' digits are near uniform, as the samples' are, so C2ST judges the samples' realism and
    their spread within each class, not the label mix;
  - the samples' mean pixel spread within each asked-for digit (std over rows, averaged over
    pixels and digits), against the real training split's: guidance trades diversity for
    fidelity, and this shows how much.

Run: .venv/bin/python benchmarks/guidance.py [--model NAME | --budget 150] [--store DIR]
     [--scales 0,1,3] [--per-class 100] [--steps N] [--seed 0]
With --model the stored model (a conditional diffusion on digits, guided sampler) is measured;
otherwise one is trained here with the default options for --budget seconds.

Measured (benchmarks/RESULTS.md, "Conditional models"): the conditional diffusion of
benchmarks/conditional.py (120 s on an idle 2-core machine, 25 epochs; test bits/dim 1.788
marginal, 1.734 given the label): label accuracy 0.093 / 0.959 / 0.995 and C2ST accuracy
0.613 / 0.506 / 0.665 at w = 0 / 1 / 3, within-digit spread 3.52 / 2.45 / 1.72 (real: 2.63).
Guidance buys the asked-for digit at the cost of spread; C2ST is best at w = 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a stored conditional diffusion on digits (else: train one)")
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds (no --model)")
    parser.add_argument("--store", help="BENTOML_HOME (default: the environment's, or a temporary one)")
    parser.add_argument("--scales", default="0,1,3", help="guidance scales w, comma separated")
    parser.add_argument("--per-class", type=int, default=100, help="samples per digit and scale")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.store:
        os.environ["BENTOML_HOME"] = args.store
    elif not args.model:
        os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genreg-guidance-")
    sys.path.insert(0, str(ROOT))

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from registry.datasets import load_dataset
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model
    from registry.runtime.two_sample import c2st

    data = load_dataset("digits", conditional=True)
    assert data.labels is not None
    if args.model:
        stored = get_model(args.model)
        trained = f"stored model {stored.tag}"
    else:
        from registry.contract.family import TrainControl
        from registry.contract.loading import get_plugins
        from registry.pipeline.train import train_and_store

        family = get_plugins().get("diffusion")
        start = time.monotonic()
        control = TrainControl(seed=args.seed, time_budget=args.budget, progress=False)
        stored = train_and_store(family, data, family.Config(), control, name="diffusion-digits-guided")
        fit = stored.meta["train"]
        trained = (
            f"trained here: {fit['seconds']:.0f} s of training ({fit['epochs']} epochs, best "
            f"{fit['best_epoch']}, {fit['stopped']}), {time.monotonic() - start:.0f} s with export "
            "and evaluation; default options"
        )
    loaded = LoadedModel(stored)
    spec = stored.graph("sampler")
    if loaded.classes != data.classes or spec.condition is None or not spec.condition.guidance:
        raise SystemExit(
            f"{stored.tag} is not a guided conditional model of the digits' {data.classes} classes"
        )

    # The judge: a linear classifier of the real digits (pixels scaled to [0, 1]).
    scale = 1.0 / (data.levels - 1)
    judge = LogisticRegression(max_iter=2000).fit(data.train * scale, data.labels["train"])
    real_accuracy = judge.score(data.test * scale, data.labels["test"])

    def spread(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean([x[y == c].std(0).mean() for c in range(data.classes)]))

    labels = np.repeat(np.arange(data.classes), args.per_class)
    test = stored.metrics["test"]
    cond = test.get("conditional", {})
    print(f"model: {stored.tag} ({trained})")
    print(
        f"test bits/dim: marginal {test['bits_per_dim']:.3f}, conditional {cond.get('bits_per_dim', float('nan')):.3f}; "
        f"Bayes classifier accuracy (from the bound) {cond.get('classify', {}).get('accuracy', float('nan')):.3f}"
    )
    print(f"steps: {loaded.steps(args.steps)}; {len(labels)} samples per scale ({args.per_class} per digit)")
    print()
    print(
        "| guidance w | label accuracy (LogisticRegression) | C2ST acc vs test (AUC) | within-digit spread | sample s |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| real test rows | {real_accuracy:.3f} | - | {spread(data.train, data.labels['train']):.3f} (train) | - |"
    )
    for w in (float(s) for s in args.scales.split(",")):
        start = time.monotonic()
        x = loaded.sample(len(labels), seed=args.seed, steps=args.steps, labels=labels, guidance=w)
        seconds = time.monotonic() - start
        accuracy = float(np.mean(judge.predict(x * scale) == labels))
        test2 = c2st(x, data.test, seed=args.seed)
        print(
            f"| {w:g} | {accuracy:.3f} | {test2['accuracy']:.3f} ({test2['auc']:.3f}) "
            f"| {spread(x, labels):.3f} | {seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
