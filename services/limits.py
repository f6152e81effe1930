"""Each model's published limits: the largest request of each kind that the routes take.

GET /models and the OpenAPI document publish them, and the routes refuse past them, so a
published request is never refused for its size. Each limit is the least of:

- the request models' caps (GENREG_MAX_ROWS, GENREG_MAX_N, GENREG_MAX_TWO_SAMPLE,
  GENREG_MAX_DRAW_ROWS);
- the rows whose widest JSON fits a JSON body (services.schemas.body_rows), for x and for z;
- the rows the graph's measured rate runs in half the deadline (registry.runtime.budget.row_limit);
- the rows whose held arrays let the request's plan be admitted within its memory budget
  (registry.runtime.models.LoadedModel.plan, GENREG_REQUEST_MEMORY): the same accounting,
  so the limit and the admission cannot disagree.

A stored version that is not loaded is judged by the costs stored with its graphs.
"""

from __future__ import annotations

from collections.abc import Callable

from registry.runtime import latent, scoring
from registry.runtime.budget import HELD_VALUE_BYTES, REQUEST_MEMORY, RESERVE, row_limit
from registry.runtime.graphs import GraphCost, GraphSpec
from registry.runtime.models import LoadedModel, admits, most_rows, sample_held, score_held
from registry.runtime.store import StoredModel
from registry.runtime.two_sample import c2st_bytes, mmd_bytes
from services.schemas import (
    MAX_DRAW_ROWS,
    MAX_N,
    MAX_PERMUTATIONS,
    MAX_ROWS,
    MAX_TWO_SAMPLE,
    body_rows,
    sampling,
)
from services.traffic import IN_TASK, TASK_SECONDS, Traffic

# This worker's requests in flight and their accounting (one per process, as the routes are).
TRAFFIC = Traffic()

Model = LoadedModel | StoredModel
CostOf = Callable[[GraphSpec], GraphCost | None]


def work_seconds(task: bool | None = None) -> float | None:
    """The seconds a request's work may take: a task's (GENREG_TASK_SECONDS) when ``task`` (None:
    when one runs or is being submitted in this context), else the synchronous deadline."""
    if task is None:
        task = IN_TASK.get()
    return TASK_SECONDS if task else TRAFFIC.timeout


def _costs(model: Model) -> tuple[StoredModel, CostOf, int]:
    if isinstance(model, LoadedModel):
        return model.stored, model.cost, model.budget
    return model, lambda spec: spec.cost, REQUEST_MEMORY


def _dim(stored: StoredModel) -> int:
    return int(stored.data["dim"])


def row_cap(model: Model) -> int:
    """The most rows of x a JSON body may carry for the model (services.schemas.body_rows; the
    request models' own caps, GENREG_MAX_ROWS and GENREG_MAX_TWO_SAMPLE, apply besides)."""
    stored = model.stored if isinstance(model, LoadedModel) else model
    return body_rows(_dim(stored), stored.data.get("levels"))


def _power_of_two_at_most(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest power of two up to ``limit`` (itself first) that ``fits``; 1 when none does
    (the plan then refuses even one row, naming the field and the memory)."""
    rows = limit
    while rows > 1 and not fits(rows):
        rows = 1 << (rows.bit_length() - 1) if rows & (rows - 1) else rows // 2
    return rows


def sample_limit(model: Model, task: bool | None = None) -> int:
    """The most graph rows (n x steps, steps weighed by draw_weight) a request may ask of the
    model's sampler: GENREG_MAX_DRAW_ROWS, or fewer where its measured rate says they would not
    run in half the deadline (a task's: work_seconds). How many samples one request may hold
    whatever its steps is :func:`sample_n`."""
    stored, cost_of, _ = _costs(model)
    spec = stored.graph("sampler")
    if spec is None:
        return MAX_DRAW_ROWS
    info = sampling(stored)
    most = info["max_steps"] or info["steps"] or 1
    return row_limit(cost_of(spec), MAX_DRAW_ROWS, work_seconds(task), calls=most)


def sample_n(model: Model) -> int | None:
    """The most samples one /sample may draw (GENREG_MAX_N, or fewer where the state, noise and
    answer it holds would not let its plan be admitted; None: the model cannot sample)."""
    stored, cost_of, budget = _costs(model)
    spec = stored.graph("sampler")
    if spec is None:
        return None
    width = spec.loop.state_dim if spec.loop is not None else 0
    return min(MAX_N, most_rows(spec, cost_of(spec), width, sample_held(stored, spec, 1), budget))


def score_limit(model: Model, kind: str, task: bool | None = None) -> int:
    """The most graph rows (rows x k, k weighed by draw_weight) a request may score as ``kind``:
    the rate's limit, lowered (by powers of two) until the largest request under it, as many
    rows as a body carries and as many draws as the limit, holds little enough to be admitted."""
    stored, cost_of, budget = _costs(model)
    role_kind = scoring.source_kind(stored) if kind == "classify" else kind
    spec = stored.graph("discriminator") if kind == "discriminator" else stored.graph("scorer", role_kind)
    cost = cost_of(spec) if spec is not None else None
    # A conditional model scored without labels runs each row once per class (twice for an
    # average-only bound's marginal): the published limit holds for a request with or without them.
    passes = scoring.passes(stored, kind)
    limit = max(1, row_limit(cost, MAX_DRAW_ROWS, work_seconds(task)) // passes)
    if spec is None:
        return limit
    dim, most_x = _dim(stored), min(MAX_ROWS, row_cap(stored))

    def fits(draws: int) -> bool:
        return admits(spec, cost, dim, score_held(min(most_x, draws), draws, dim, passes), budget)

    return _power_of_two_at_most(limit, fits)


def latent_limits(model: Model) -> dict[str, int]:
    """The most rows one /encode and one /decode may take: GENREG_MAX_ROWS, or fewer where the
    rows' JSON would not fit a body (z's as x's), where the graph's measured rate would not run
    them in half the deadline, or where their held rows and answers would not be admitted ({}
    for a model without a latent space). A decode is judged by its draw's graph as well as its
    mean's. Encode and decode are never tasks."""
    stored, cost_of, budget = _costs(model)
    dim = latent.latent_dim(stored)
    ops = {
        "encode": [latent.encoder(stored)],
        "decode": [latent.decoder(stored), latent.decoder(stored, True)],
    }
    limits = {}
    for op, specs in ops.items():
        specs = [spec for spec in specs if spec is not None]
        if not specs or dim is None:
            continue
        width = latent.in_width(stored, specs[0])
        most = min(MAX_ROWS, body_rows(width, stored.data.get("levels") if op == "encode" else None))
        for spec in specs:
            cost = cost_of(spec)
            most = min(most, row_limit(cost, MAX_ROWS, work_seconds(False)))
            most = min(most, most_rows(spec, cost, width, latent.held_row(stored, spec), budget))
        limits[op] = max(1, most)
    return limits


def two_sample_bytes(dim: int, real: int, drawn: int, test: str, permutations: int) -> int:
    """What a two-sample test of ``real`` rows against ``drawn`` samples holds once they are
    drawn: the parsed body, both samples as float64 (and the draw's float32 while it is cast),
    and the test's own working memory."""
    working = mmd_bytes(real, drawn, dim, permutations) if test == "mmd" else c2st_bytes(real, drawn, dim)
    return real * dim * (HELD_VALUE_BYTES + 8) + drawn * dim * 12 + working


def two_sample_held(dim: int, real: int) -> int:
    """What a two-sample test's real rows hold while its samples are drawn (their parse, float64)."""
    return real * dim * (HELD_VALUE_BYTES + 8)


def two_sample_fits(model: Model, real: int, drawn: int, test: str, permutations: int) -> bool:
    """Whether the test's phase after the draw fits the request's memory budget (the draw's own
    phase is its sampling plan's, with :func:`two_sample_held` held besides)."""
    stored, _, budget = _costs(model)
    return two_sample_bytes(_dim(stored), real, drawn, test, permutations) + RESERVE <= budget


def two_sample_rows(model: Model) -> int | None:
    """The most rows of x, and samples (n_model), one /two_sample_test may take whichever test and
    permutations it asks for (GENREG_MAX_TWO_SAMPLE, or fewer where the draw's plan would not be
    admitted with the real rows held, or the test's matrices would not fit; None: the model
    cannot sample). A request within it on both counts is within it on memory."""
    stored, cost_of, budget = _costs(model)
    spec = stored.graph("sampler")
    if spec is None:
        return None
    dim = _dim(stored)
    width = spec.loop.state_dim if spec.loop is not None else 0
    held_row = sample_held(stored, spec, 1) + two_sample_held(dim, 1)
    most = min(MAX_TWO_SAMPLE, most_rows(spec, cost_of(spec), width, held_row, budget))

    def fits(rows: int) -> bool:
        return all(two_sample_fits(model, rows, rows, test, MAX_PERMUTATIONS) for test in ("mmd", "c2st"))

    low, high = 0, most  # the largest that fits, by bisection (memory grows with the rows)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def limit_source(limit: int) -> str:
    """Why a graph-row limit below GENREG_MAX_DRAW_ROWS is what it is, for a refusal's message."""
    if limit >= MAX_DRAW_ROWS:
        return ""
    if IN_TASK.get():
        return (
            f", this model's limit for a task: the rows it runs in half of {TASK_SECONDS:g} s at "
            "its measured rate (GET /models: task_sample_rows, task_score_rows)"
        )
    return (
        f", this model's limit: the rows it runs in half of the {TRAFFIC.timeout:g}-s "
        "deadline at its measured rate, or holds within the request memory budget (GET /models: "
        "sample_rows, score_rows); a task (POST /NAME/submit) may run more"
    )
