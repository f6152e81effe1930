"""Conditional models on digits, measured: class fidelity of samples, generative classification,
conditional and marginal bits/dim against the unconditional model of the same family.

For each family, a conditional model (`--conditional`: the digit's class) and an unconditional
one are trained on digits for the same time budget (seed 0), then, through ONNX Runtime as the
service answers:

- **class fidelity**: 1,000 conditional samples (100 of each class) are labelled by an
  independent classifier, scikit-learn's logistic regression fitted on the real training digits
  (pixels / 16); its accuracy against the requested label. A guided sampler (diffusion) is drawn
  at guidance 0 (unconditional), 1 (conditional) and 3 (guided).
- **generative classification**: `kind=classify` (Bayes' rule, p(y|x) from p(x|y) p(y)) on the
  digits test split; its accuracy beside the same logistic regression on the test split (the
  discriminative anchor). From bounds (VAE, diffusion) the posterior is of the bounds.
- **bits/dim** on the test split: log p(x|y) with the true labels, the marginal
  log sum_y p(x|y) p(y), and the unconditional model's (the stored evaluation's figures).
- C2ST accuracy of the conditional samples (labels drawn as in the test split) against the
  test rows (0.5: indistinguishable).

Run: .venv/bin/python benchmarks/conditional.py [--families categorical autoregressive ...]
     [--budget 120] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="genreg-bench-conditional-"))

import numpy as np

from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import load_dataset
from registry.pipeline.train import train_and_store
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import score
from registry.runtime.two_sample import c2st

FAMILIES = ("categorical", "autoregressive", "flow", "vae", "diffusion", "gan")
PER_CLASS = 100
GUIDANCE = (0.0, 1.0, 3.0)


def anchor(data):
    """Logistic regression on the real training digits: the independent labeller of samples and
    the discriminative classifier generative classification is compared with."""
    from sklearn.linear_model import LogisticRegression

    # Its regularisation chosen on the validation split: the anchor is as good as it fairly gets.
    def fitted(c: float) -> LogisticRegression:
        return LogisticRegression(max_iter=5000, C=c).fit(data.train / 16.0, data.labels["train"])

    def validation(clf: LogisticRegression) -> float:
        return clf.score(data.validation / 16.0, data.labels["validation"])

    return max((fitted(c) for c in (0.01, 0.1, 1.0, 10.0, 100.0)), key=validation)


def train(family: str, data, budget: float, seed: int = 0):
    fam = get_plugins().get(family)
    control = TrainControl(
        seed=seed, time_budget=budget if family not in ("categorical",) else None, progress=False
    )
    start = time.monotonic()
    tag = "cond" if data.labels is not None else "uncond"
    stored = train_and_store(fam, data, fam.Config(), control, name=f"{family}-digits-{tag}")
    return stored, time.monotonic() - start


def fidelity(loaded: LoadedModel, clf, guidance: float | None, seed: int = 1) -> float:
    classes = loaded.classes or 0
    wanted = np.repeat(np.arange(classes), PER_CLASS)
    x = loaded.sample(len(wanted), seed=seed, labels=wanted, guidance=guidance)
    return float(np.mean(clf.predict(np.asarray(x) / 16.0) == wanted))


def measure(family: str, cond_data, plain_data, clf, budget: float) -> dict:
    stored, seconds = train(family, cond_data, budget)
    loaded = LoadedModel(stored, providers=["CPUExecutionProvider"])
    test = stored.metrics["test"]
    row: dict = {
        "family": family,
        "train_seconds": round(seconds, 1),
        "kind": test.get("kind"),
        "conditional_bits_per_dim": test.get("conditional", {}).get("bits_per_dim"),
        "marginal_bits_per_dim": test.get("bits_per_dim"),
    }
    guided = loaded.stored.graph("sampler").condition.guidance is not None
    for w in GUIDANCE if guided else (None,):
        key = "fidelity" if w is None else f"fidelity_w{w:g}"
        row[key] = fidelity(loaded, clf, w)
    if "classify" in loaded.kinds:
        result = score(loaded, cond_data.test, "classify", seed=0)
        row["classify_accuracy"] = float(np.mean(result.labels == cond_data.labels["test"]))
        row["classify_source"] = result.source
    fake = loaded.sample(len(cond_data.test), seed=2, labels=cond_data.labels["test"])
    row["c2st"] = c2st(cond_data.test.astype(np.float64), np.asarray(fake, dtype=np.float64), seed=0)[
        "accuracy"
    ]
    plain, _ = train(family, plain_data, budget)
    row["unconditional_bits_per_dim"] = plain.metrics["test"].get("bits_per_dim")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds per model")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cond_data, plain_data = load_dataset("digits", conditional=True), load_dataset("digits")
    clf = anchor(cond_data)
    lr_test = float(np.mean(clf.predict(cond_data.test / 16.0) == cond_data.labels["test"]))
    print(
        f"logistic regression (pixels / 16, C={clf.C:g} by validation) on the digits test split: accuracy {lr_test:.3f}"
    )
    rows = []
    for family in args.families:
        row = measure(family, cond_data, plain_data, clf, args.budget)
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = (
        "| family | fidelity (guidance) | classify accuracy | from | bits/dim p(x|y) | marginal | "
        "unconditional | C2ST | train s |"
    )
    print("\n" + header + "\n|" + "---|" * 9)
    for r in rows:
        fid = (
            " / ".join(f"{r[k]:.3f} (w={k[10:]})" for k in r if k.startswith("fidelity_w"))
            or f"{r['fidelity']:.3f}"
        )
        acc = f"{r['classify_accuracy']:.3f}" if "classify_accuracy" in r else "no likelihood"

        def bits(key: str, r: dict = r) -> str:
            return f"{r[key]:.3f}" if r.get(key) is not None else "-"

        print(
            f"| {r['family']} | {fid} | {acc} | {r.get('classify_source', '-')} | "
            f"{bits('conditional_bits_per_dim')} | {bits('marginal_bits_per_dim')} | "
            f"{bits('unconditional_bits_per_dim')} | {r['c2st']:.3f} | {r['train_seconds']:.0f} |"
        )
    print(f"\nanchor: logistic regression test accuracy {lr_test:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"logistic_regression": lr_test, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
