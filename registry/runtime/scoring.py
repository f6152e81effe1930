"""The one scoring path: (model, rows, kind, k, seed) -> per-row scores and their summaries.

The CLI, the service and the training pipeline's evaluation all call :func:`score`, so the
kind is resolved and checked, the rows are checked (:func:`registry.runtime.rows.check_rows`)
and a k-draw bound is summarised in exactly one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from registry.runtime.budget import Plan
from registry.runtime.graphs import Estimate
from registry.runtime.models import CapabilityError, LoadedModel, stored_classes
from registry.runtime.rows import InputError, check_rows
from registry.runtime.store import StoredModel
from registry.runtime.units import bits_per_dim, score_summary

SCORE_KINDS = ("log_prob", "bound", "classify", "discriminator")
ESTIMATES = get_args(Estimate)


def bound_estimates(log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(average bound, importance-weighted bound) per row from (n, k) log weights.

    mean_k log w_k is the ELBO-style bound; log mean_k w_k (computed with log-sum-exp) is the
    importance-weighted bound, at least as large and still a lower bound in expectation.
    """
    top = log_w.max(1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    iw = (top + np.log(np.mean(np.exp(log_w - top), axis=1, keepdims=True)))[:, 0]
    return log_w.mean(1), iw


@dataclass(frozen=True)
class Scores:
    """What one scoring request answers.

    ``scores`` are nats per row, or P(real) for the discriminator, whose ``bits_per_dim`` is
    None. For a bound, ``estimate`` says how its k draws per row were summarised: the
    importance-weighted bound log mean_k w_k (``elbo`` is then the plain average mean_k log w_k,
    for k > 1), or the plain average alone (a scorer whose draws are not log importance
    weights, for which log mean exp would not be a bound).
    """

    model: str
    kind: str
    k: int
    scores: np.ndarray
    bits_per_dim: np.ndarray | None
    elbo: np.ndarray | None
    dim: int
    estimate: str | None = None
    # A conditional model's answer: ``given`` is "labels" (log p(x|y) of each row's label) or
    # "marginal" (log sum_y p(x|y) p(y)); a classification's posterior over the classes per
    # row, its most likely class, and the score kind it was computed from.
    given: str | None = None
    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    source: str | None = None

    @property
    def rows(self) -> int:
        return len(self.scores)

    @property
    def likelihood(self) -> bool:
        return self.bits_per_dim is not None

    def summary(self, of: Literal["scores", "elbo"] = "scores", prefix: str = "") -> dict[str, float | None]:
        """Mean and standard error over rows of ``scores`` or ``elbo``, keys led by ``prefix``."""
        values = self.elbo if of == "elbo" else self.scores
        return score_summary(values, self.dim if self.likelihood else None, prefix=prefix)

    def as_dict(self) -> dict[str, Any]:
        """The /score answer body (its keys in their published order)."""
        out: dict[str, Any] = {"model": self.model, "kind": self.kind, "scores": self.scores}
        if self.kind == "classify":
            out.update(labels=self.labels, probabilities=self.probabilities, source=self.source)
            if self.source == "bound":
                out.update(k=self.k, estimate=self.estimate)
            return out
        if self.given is not None:
            out["given"] = self.given
        if self.kind == "bound":
            out.update(bits_per_dim=self.bits_per_dim, k=self.k, estimate=self.estimate)
            out.update(self.summary())
            if self.elbo is not None:
                out["elbo"] = self.elbo
                out.update(self.summary("elbo", prefix="elbo_"))
            return out
        out.update(self.summary())
        if self.bits_per_dim is not None:
            out["bits_per_dim"] = self.bits_per_dim
        return out


def draw_weight(k: int) -> int:
    """What k noise draws per row weigh against a draw budget: k rounded up to a power of two.

    Under rows x weight <= budget the accepted (rows, k) are a few rectangles, one per power of
    two, which the service's published JSON Schema states exactly (services.openapi); a plain
    product is no constraint JSON Schema can express.
    """
    return 1 << (k - 1).bit_length()


def check_draws(rows: int, k: int, max_draw_rows: int | None, why: str = "") -> None:
    """InputError when rows x k (k weighed by :func:`draw_weight`) exceeds ``max_draw_rows``,
    naming ``k`` (or ``x`` for a single draw); ``why`` says where the limit comes from."""
    if max_draw_rows is None or rows * draw_weight(k) <= max_draw_rows:
        return
    if k == 1:
        raise InputError("x", f"x: {rows} rows exceed {max_draw_rows}{why}")
    weight = f" (k counts as {draw_weight(k)}, the next power of two)" if draw_weight(k) != k else ""
    raise InputError("k", f"k: rows x k = {rows} x {k}{weight} exceeds {max_draw_rows}{why}")


def default_kind(loaded: LoadedModel) -> str | None:
    """The kind a request that names none gets: the model's first (None if it scores nothing)."""
    return loaded.kinds[0] if loaded.kinds else None


def resolve_kind(loaded: LoadedModel, kind: str | None) -> str:
    """``kind``, or the model's first; CapabilityError (field ``kind``) when the model lacks it."""
    kind = kind or default_kind(loaded)
    if kind not in loaded.kinds:
        raise CapabilityError(
            f"{loaded.stored.tag} cannot score kind {kind!r}; it has: {', '.join(loaded.kinds) or 'none'}",
            field="kind",
        )
    return kind


def source_kind(loaded: LoadedModel | StoredModel) -> str:
    """The score a classification is computed from: the exact likelihood where there is one."""
    caps = loaded.stored.capabilities if isinstance(loaded, LoadedModel) else loaded.capabilities
    return "log_prob" if "log_prob" in caps else "bound"


def _average_only(loaded: LoadedModel | StoredModel) -> bool:
    stored = loaded.stored if isinstance(loaded, LoadedModel) else loaded
    spec = stored.graph("scorer", "bound")
    return spec is not None and "importance_weighted" not in spec.estimates


def passes(loaded: LoadedModel | StoredModel, kind: str, labelled: bool = False) -> int:
    """How many times each row runs through the scorer for ``kind``: once, or, for a conditional
    model scored without labels, once per class (the marginal sums over them; a classification
    compares them), and twice per class for the marginal of a bound whose draws are not log
    importance weights (:func:`marginal`)."""
    stored = loaded.stored if isinstance(loaded, LoadedModel) else loaded
    classes = stored_classes(stored.data)
    if not classes or labelled or kind == "discriminator":
        return 1
    if kind == "bound" and _average_only(stored):
        return 2 * classes
    return classes


@dataclass(frozen=True)
class Checked:
    """A scoring request that passed every check: what :func:`compute` runs."""

    kind: str
    rows: np.ndarray
    k: int
    estimate: str | None
    labels: np.ndarray | None = None  # a conditional model's label per row (None: none given)
    passes: int = 1  # scorer runs per row and draw (:func:`passes`)

    @property
    def graph_rows(self) -> int:
        return len(self.rows) * self.k * self.passes


def check(
    loaded: LoadedModel,
    x: Any,
    kind: str | None = None,
    *,
    k: int = 1,
    what: str = "x",
    max_draw_rows: int | None = None,
    estimate: str | None = None,
    why: str = "",
    labels: Any = None,
    labels_field: str = "labels",
) -> Checked:
    """Every check of a scoring request, in this order: the kind (CapabilityError), the rows
    against the model's data (InputError naming ``what``), the ``labels`` (one class per row, for
    a conditional model; a classification takes none), then ``k`` (InputError naming ``k``):
    draws apply to a bound only (or a classification computed from one), and rows x k (k
    weighed by :func:`draw_weight`) may not exceed ``max_draw_rows``; then ``estimate`` (a
    bound's only; CapabilityError naming ``estimate`` where the scorer's draws do not support
    it). Without ``estimate`` a bound is the tightest the scorer supports. ``why`` says where
    ``max_draw_rows`` comes from, in the refusal; ``labels_field`` is what the request calls
    its labels (V2: y)."""
    kind = resolve_kind(loaded, kind)
    rows = check_rows(x, loaded.stored.data, what=what)
    y = None
    if labels is not None:
        if kind == "classify":
            raise InputError(
                labels_field, f"{labels_field}: kind 'classify' answers each row's class; send the rows alone"
            )
        y = loaded.check_labels(labels, len(rows), what=labels_field)
    elif kind == "discriminator" and _conditional_discriminator(loaded):
        raise InputError(
            labels_field,
            f"{labels_field}: {loaded.stored.tag}'s discriminator judges a row given its class; "
            "send one label per row",
        )
    drawn = source_kind(loaded) if kind == "classify" else kind
    if k > 1 and drawn != "bound":
        raise InputError("k", f"k > 1 applies to kind 'bound' only, not {kind!r}")
    if estimate is not None and drawn != "bound":
        raise InputError("estimate", f"estimate applies to kind 'bound' only, not {kind!r}")
    if estimate is not None and estimate not in ESTIMATES:
        raise InputError("estimate", f"estimate: {estimate!r} is not one of {', '.join(ESTIMATES)}")
    check_draws(len(rows), k, max_draw_rows, why)
    if drawn == "bound":
        estimate = bound_estimate(loaded, estimate)
    return Checked(kind, rows, k, estimate, y, passes(loaded, kind, y is not None))


def _conditional_discriminator(loaded: LoadedModel) -> bool:
    spec = loaded.stored.graph("discriminator")
    return spec is not None and spec.condition is not None


def _estimate(
    loaded: LoadedModel, checked: Checked, seed: int | None, plan: Plan | None, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(each row's score for its label, its plain-average bound where k > 1 makes it differ)."""
    if (checked.kind if checked.kind != "classify" else source_kind(loaded)) != "bound":
        return loaded.point_scores(checked.rows, "log_prob", seed, plan, labels), None
    average, weighted = bound_estimates(loaded.log_weights(checked.rows, seed, checked.k, plan, labels))
    if checked.estimate == "importance_weighted":
        return weighted, (average if checked.k > 1 else None)
    return average, None


def _per_class(
    loaded: LoadedModel, checked: Checked, seed: int | None, plan: Plan | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, classes) scores of every row against every class, and the plain averages. One seed
    serves every class: given a seed, the classes share their noise (their differences are the
    model's, not the draws'); without one, each class draws afresh."""
    n, classes = len(checked.rows), loaded.classes or 0
    scores, averages = np.empty((n, classes)), np.empty((n, classes))
    for c in range(classes):
        scores[:, c], average = _estimate(loaded, checked, seed, plan, np.full(n, c, dtype=np.int64))
        averages[:, c] = scores[:, c] if average is None else average
    return scores, (averages if checked.k > 1 and checked.estimate == "importance_weighted" else None)


def log_sum_exp(a: np.ndarray) -> np.ndarray:
    top = np.max(a, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return (top + np.log(np.sum(np.exp(a - top), axis=1, keepdims=True)))[:, 0]


def posterior(joint: np.ndarray) -> np.ndarray:
    """p(y|x) from (n, classes) log p(x|y) + log p(y), by Bayes' rule."""
    return np.exp(joint - log_sum_exp(joint)[:, None])


def marginal(
    loaded: LoadedModel, checked: Checked, seed: int | None, plan: Plan | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """log p(x) = log sum_y p(x|y) p(y) of a conditional model scored without labels, and its
    plain-average companion (or None).

    Exact from exact scores. From bounds it stays a lower bound: where each draw w_y is a log
    importance weight (E exp w_y <= p(x|y), and so is exp of their mean, by Jensen),
    E sum_y p(y) exp(w_y) <= p(x), and log of it is a bound in expectation as any IWAE is. A
    scorer whose draws are only unbiased estimates of a bound (not log weights) would be biased
    upwards by the log-sum-exp; there the classes are treated as a latent variable instead,
    sum_y q(y) [B_y + log p(y) - log q(y)] <= log p(x) for any q, with q(y) the posterior from an
    independent second set of draws (so that q does not depend on the B it weighs).
    """
    prior = loaded.class_log_prior()[None, :]
    scores, averages = _per_class(loaded, checked, seed, plan)
    if checked.kind == "bound" and _average_only(loaded):
        other = None if seed is None else int(np.random.default_rng(seed).spawn(1)[0].integers(2**62))
        q = posterior(_per_class(loaded, checked, other, plan)[0] + prior)
        log_q = np.log(np.maximum(q, np.finfo(np.float64).tiny))
        return np.sum(q * (scores + prior - log_q), axis=1), None
    return log_sum_exp(scores + prior), None if averages is None else log_sum_exp(averages + prior)


def compute(loaded: LoadedModel, checked: Checked, seed: int | None = 0, plan: Plan | None = None) -> Scores:
    """The scores of a checked request; ``plan``: how its graph calls run, where the caller
    planned them already (the service, for admission); else planned here."""
    kind, rows, k, estimate, labels = checked.kind, checked.rows, checked.k, checked.estimate, checked.labels
    tag, dim = loaded.stored.tag, loaded.dim
    if kind == "discriminator":
        logits = loaded.logits(rows, plan, labels).astype(np.float64)
        return Scores(tag, kind, k, 1.0 / (1.0 + np.exp(-logits)), None, None, dim)
    if kind == "classify":
        probabilities = posterior(
            _per_class(loaded, checked, seed, plan)[0] + loaded.class_log_prior()[None, :]
        )
        source = source_kind(loaded)
        return Scores(
            tag,
            kind,
            k,
            probabilities.max(1),
            None,
            None,
            dim,
            estimate if source == "bound" else None,
            probabilities=probabilities,
            labels=probabilities.argmax(1),
            source=source,
        )
    given = None
    if loaded.classes is None or labels is not None:
        scores, elbo = _estimate(loaded, checked, seed, plan, labels)
        given = "labels" if labels is not None else None
    else:
        scores, elbo = marginal(loaded, checked, seed, plan)
        given = "marginal"
    return Scores(tag, kind, k, scores, bits_per_dim(scores, dim), elbo, dim, estimate, given=given)


def score(
    loaded: LoadedModel,
    x: Any,
    kind: str | None = None,
    *,
    k: int = 1,
    seed: int | None = 0,
    what: str = "x",
    max_draw_rows: int | None = None,
    estimate: str | None = None,
    plan: Plan | None = None,
    labels: Any = None,
) -> Scores:
    """Score rows ``x`` (anything array-like) with ``loaded``: :func:`check`, then
    :func:`compute`; the only scoring path."""
    checked = check(
        loaded, x, kind, k=k, what=what, max_draw_rows=max_draw_rows, estimate=estimate, labels=labels
    )
    return compute(loaded, checked, seed, plan)


def bound_estimate(loaded: LoadedModel, estimate: str | None) -> str:
    """The estimate a bound request gets: the one asked for if the scorer supports it (else
    CapabilityError naming ``estimate``), or the tightest it supports."""
    supported = loaded.estimates()
    if estimate is None:
        return "importance_weighted" if "importance_weighted" in supported else "average"
    if estimate not in supported:
        raise CapabilityError(
            f"{loaded.stored.tag}'s bound supports the estimate(s) {', '.join(supported)}, not {estimate!r}: "
            "its draws are unbiased estimates of a bound, not log importance weights, so log mean exp "
            "over them is not a bound",
            field="estimate",
        )
    return estimate
