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
from registry.runtime.models import CapabilityError, LoadedModel
from registry.runtime.rows import InputError, check_rows
from registry.runtime.units import bits_per_dim, score_summary

SCORE_KINDS = ("log_prob", "bound", "discriminator")
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


@dataclass(frozen=True)
class Checked:
    """A scoring request that passed every check: what :func:`compute` runs."""

    kind: str
    rows: np.ndarray
    k: int
    estimate: str | None

    @property
    def graph_rows(self) -> int:
        return len(self.rows) * self.k


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
) -> Checked:
    """Every check of a scoring request, in this order: the kind (CapabilityError), the rows
    against the model's data (InputError naming ``what``), then ``k`` (InputError naming ``k``):
    draws apply to a bound only, and rows x k (k weighed by :func:`draw_weight`) may not exceed
    ``max_draw_rows``; then ``estimate`` (a bound's only; CapabilityError naming ``estimate``
    where the scorer's draws do not support it). Without ``estimate`` a bound is the tightest
    the scorer supports. ``why`` says where ``max_draw_rows`` comes from, in the refusal."""
    kind = resolve_kind(loaded, kind)
    rows = check_rows(x, loaded.stored.data, what=what)
    if k > 1 and kind != "bound":
        raise InputError("k", f"k > 1 applies to kind 'bound' only, not {kind!r}")
    if estimate is not None and kind != "bound":
        raise InputError("estimate", f"estimate applies to kind 'bound' only, not {kind!r}")
    if estimate is not None and estimate not in ESTIMATES:
        raise InputError("estimate", f"estimate: {estimate!r} is not one of {', '.join(ESTIMATES)}")
    check_draws(len(rows), k, max_draw_rows, why)
    if kind == "bound":
        estimate = bound_estimate(loaded, estimate)
    return Checked(kind, rows, k, estimate)


def compute(loaded: LoadedModel, checked: Checked, seed: int | None = 0, plan: Plan | None = None) -> Scores:
    """The scores of a checked request; ``plan``: how its graph calls run, where the caller
    planned them already (the service, for admission); else planned here."""
    kind, rows, k, estimate = checked.kind, checked.rows, checked.k, checked.estimate
    elbo = None
    if kind == "discriminator":
        logits = loaded.logits(rows, plan).astype(np.float64)
        return Scores(loaded.stored.tag, kind, k, 1.0 / (1.0 + np.exp(-logits)), None, None, loaded.dim)
    if kind == "bound":
        average, weighted = bound_estimates(loaded.log_weights(rows, seed, k, plan))
        if estimate == "importance_weighted":
            scores, elbo = weighted, (average if k > 1 else None)
        else:
            scores = average
    else:
        scores = loaded.point_scores(rows, kind, seed, plan)
    return Scores(
        loaded.stored.tag, kind, k, scores, bits_per_dim(scores, loaded.dim), elbo, loaded.dim, estimate
    )


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
) -> Scores:
    """Score rows ``x`` (anything array-like) with ``loaded``: :func:`check`, then
    :func:`compute`; the only scoring path."""
    checked = check(loaded, x, kind, k=k, what=what, max_draw_rows=max_draw_rows, estimate=estimate)
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
