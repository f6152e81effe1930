"""Test-split metrics of a model as it will be served: scored through its exported graphs.

Likelihood (or bound) in nats and bits/dim, the importance-weighted bound with 64 draws,
KL(data || model) where the data's density is known, two-sample tests of samples against
held-out rows, the JSD bound from a discriminator, and ELBO surgery and MIG for models with
an encoder. Every score goes through :func:`registry.runtime.scoring.score`, as the service's do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from registry.contract.dataset import Dataset
from registry.pipeline.surgery import elbo_surgery, encode, mig
from registry.runtime import latent
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import passes, score
from registry.runtime.two_sample import c2st, jsd_lower_bound, mmd_test
from registry.runtime.units import bits_per_dim

IWAE_K = 64
TWO_SAMPLE_ROWS = 1000
MIN_TWO_SAMPLE_ROWS = 100
SAMPLE_SECONDS = 60.0  # what drawing the two-sample tests' samples may take, estimated first
SURGERY_ROWS = 2000
EVAL_DRAWS = 4  # uniform draws per test row when estimating E_u of a dequantisation bound
SCORE_SECONDS = 60.0  # what the test bound's draws may take, estimated first


def two_sample_rows(loaded: LoadedModel, available: int) -> int:
    """How many samples the two-sample tests draw: TWO_SAMPLE_ROWS, fewer where drawing them
    would take over SAMPLE_SECONDS at the sampler's measured rate (a PixelCNN++ on 32x32x3
    samples 1,024 steps a row: 1,000 rows took half an hour), never under MIN_TWO_SAMPLE_ROWS."""
    rows = min(TWO_SAMPLE_ROWS, available)
    per_row = loaded.plan_sample(rows).seconds / rows
    return min(rows, max(MIN_TWO_SAMPLE_ROWS, int(SAMPLE_SECONDS / max(per_row, 1e-9))))


def bound_draws(loaded: LoadedModel, rows: int, passes: int = 1) -> int:
    """Draws of the test bound: EVAL_DRAWS, fewer where they would take over SCORE_SECONDS at the
    scorer's measured rate (a 32x32x3 diffusion's one draw of 900 rows is 18,000 U-Net passes:
    four took 3 of its 4 minutes of evaluation), never under one. Each draw is an unbiased
    estimate of the bound, so fewer widen the figure's spread, not its expectation."""
    per_draw = loaded.plan_score(rows, "bound", passes=passes).seconds
    return max(1, min(EVAL_DRAWS, int(SCORE_SECONDS / max(per_draw, 1e-9))))


def held_out_rows(real: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """The two-sample tests' ``rows`` held-out rows (float64): a seeded random subset, in order,
    where fewer than all are tested. A split's rows may be in scan order (patches-rgb's first 100
    test rows are neighbouring patches of one photograph)."""
    pick = np.sort(np.random.default_rng(seed).choice(len(real), rows, replace=False))
    return real[pick].astype(np.float64)


def likelihood_free(
    loaded: LoadedModel, real: np.ndarray, seed: int = 0, labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Two-sample tests (MMD, k-NN C2ST) of held-out rows against as many model samples, and
    the JSD lower bound from the model's own discriminator when it has one. A conditional
    model's samples are of the marginal (labels drawn from p(y)); its discriminator judges each
    row given its class: the held-out rows' own ``labels``, the samples' drawn ones."""
    rows = two_sample_rows(loaded, len(real))
    real = held_out_rows(real, rows, seed)
    fake_labels = loaded.labels_for(rows, None, seed)  # what sample() draws itself (None: unconditional)
    fake = loaded.sample(rows, seed=seed, labels=fake_labels).astype(np.float64)
    out: dict[str, Any] = {
        "rows": len(real),
        "mmd": mmd_test(real, fake, seed=seed),
        "c2st": c2st(real, fake, seed=seed),
    }
    spec = loaded.stored.graph("discriminator")
    if spec is not None and spec.condition is None:
        out["jsd"] = jsd_lower_bound(loaded.logits(real), loaded.logits(fake))
    elif spec is not None and labels is not None:  # without the rows' labels D cannot judge them
        real_labels = held_out_rows(labels, rows, seed).astype(np.int64)  # the same rows' labels
        out["jsd"] = jsd_lower_bound(
            loaded.logits(real, labels=real_labels), loaded.logits(fake, labels=fake_labels)
        )
    return out


def conditional_metrics(
    loaded: LoadedModel, x: np.ndarray, y: np.ndarray, kind: str, draws: int, seed: int
) -> dict[str, Any]:
    """log p(x|y) of the split's own labels, and the accuracy of the Bayes classifier p(y|x)
    (computed from bounds where the model has no exact likelihood: the ``source``)."""
    scores = np.mean([score(loaded, x, kind, seed=seed + i, labels=y).scores for i in range(draws)], axis=0)
    predicted = score(loaded, x, "classify", seed=seed)
    return {
        "classes": loaded.classes,
        "nats": float(scores.mean()),
        "bits_per_dim": float(bits_per_dim(scores.mean(), loaded.dim)),
        "classify": {
            "accuracy": float(np.mean(predicted.labels == y)),
            "source": predicted.source,
            "mean_max_probability": float(predicted.scores.mean()),
        },
    }


def evaluate(loaded: LoadedModel, data: Dataset, split: str = "test", seed: int = 0) -> dict[str, Any]:
    """Test-split metrics from the exported graphs, i.e. what the service will answer."""
    x = getattr(data, split)
    metrics: dict[str, Any] = {"split": split, "n": len(x)}
    if loaded.stored.graph("sampler") is not None:
        labels = None if data.labels is None else data.labels[split]
        metrics["two_sample"] = likelihood_free(loaded, x, seed=seed, labels=labels)
    kinds = [k for k in ("log_prob", "bound") if k in loaded.kinds]
    if not kinds:
        return metrics
    kind = kinds[0]
    draws = bound_draws(loaded, len(x), passes(loaded, kind)) if kind == "bound" else 1
    # A conditional model's headline is its marginal log p(x), comparable with unconditional ones.
    scores = np.mean([score(loaded, x, kind, seed=seed + i).scores for i in range(draws)], axis=0)
    if loaded.classes is not None and data.labels is not None:
        metrics["conditional"] = conditional_metrics(loaded, x, data.labels[split], kind, draws, seed)
    metrics["kind"] = kind
    metrics["draws"] = draws
    metrics["nats"] = float(scores.mean())
    metrics["bits_per_dim"] = float(bits_per_dim(scores.mean(), data.dim))
    metrics["finite_share"] = float(np.isfinite(scores).mean())
    if kind == "bound" and "importance_weighted" in loaded.estimates():
        # The importance-weighted bound with 64 draws: tighter, still a lower bound (only where
        # each draw is a log importance weight; a diffusion loss at random steps is not one).
        # A conditional model's marginal runs each row once per class.
        rows = x[: max(100, 1000 // passes(loaded, "bound"))]
        iwae = score(loaded, rows, "bound", k=IWAE_K, seed=seed, estimate="importance_weighted").scores
        metrics[f"iwae{IWAE_K}_nats"] = float(iwae.mean())
        metrics[f"iwae{IWAE_K}_bits_per_dim"] = float(bits_per_dim(iwae.mean(), data.dim))
    encoder = loaded.stored.graph("encoder")
    if encoder is not None and encoder.kind in (None, "gaussian"):  # q(z|x), a latent-variable model
        # The aggregate posterior costs N^2 per draw: 2,000 points keep it to seconds.
        metrics["surgery"] = elbo_surgery(loaded, x[:SURGERY_ROWS], seed=seed)
        if latent.encoder(loaded.stored) is not None:
            # Per-dimension KL and active units on the validation split (traversals order by it).
            metrics["latent"] = {
                "split": "validation",
                **latent.latent_report(loaded, data.validation[:SURGERY_ROWS]),
            }
        if data.factors is not None:
            splits = ("train", "validation", "test")
            codes, _ = encode(loaded, np.concatenate([getattr(data, s) for s in splits]))
            factors = np.concatenate([data.factors[s] for s in splits])
            metrics["mig"] = {**mig(codes, factors), "factors": list(data.factor_names), "n": len(codes)}
    if data.log_density is not None:
        # KL(pi || p) = E_pi[log pi(x) - log p(x)], Monte Carlo over the test samples.
        gap = data.log_density(x.astype(np.float64)) - scores
        metrics["kl"] = float(gap.mean())
        metrics["kl_stderr"] = float(gap.std() / np.sqrt(len(gap)))
    return metrics
