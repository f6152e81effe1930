"""The published limits are the admission's own (services.limits): the largest request each one
allows is admitted by the plans (registry.runtime.models.LoadedModel.plan), and, where memory is
what sets it, one row more is refused. Budgets small enough that memory binds for every shared
model stand in for wide models under the default budget (3,072-value rows at 512 MiB)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from registry.runtime import latent
from registry.runtime.budget import BudgetError
from registry.runtime.models import LoadedModel
from services import limits
from services.schemas import MAX_N, MAX_PERMUTATIONS, MAX_ROWS, MAX_TWO_SAMPLE
from services.schemas import body_rows as json_rows

pytestmark = pytest.mark.slow

BUDGETS_MIB = (40, 48)


def _admitted(make) -> bool:
    try:
        make()
    except BudgetError:
        return False
    return True


@pytest.fixture(scope="module", params=BUDGETS_MIB, ids=lambda mib: f"{mib}MiB")
def loaded(trained, request):
    return [LoadedModel(stored, budget=request.param << 20) for stored in trained.values()]


def test_the_most_samples_published_are_admitted_and_one_more_is_not(loaded):
    bound = 0
    for model in loaded:
        n = limits.sample_n(model)
        if n is None:
            continue
        assert n >= 1, model.stored.tag
        assert _admitted(lambda n=n, model=model: model.plan_sample(n)), model.stored.tag
        if n < MAX_N:
            bound += 1
            assert not _admitted(lambda n=n, model=model: model.plan_sample(n + 1)), model.stored.tag
    assert bound, "memory set no sample limit: the budgets are too large to test it"


def test_the_largest_published_score_is_admitted(loaded):
    lowered = 0
    for model in loaded:
        for kind in model.kinds:
            graph_rows = limits.score_limit(model, kind)
            passes = limits.scoring.passes(model.stored, kind)
            rows = min(MAX_ROWS, limits.row_cap(model), graph_rows)
            # The most rows, and the most draws: the two ends of the published rectangles.
            for x_rows, k in ((rows, 1), (1, graph_rows), (rows, max(1, graph_rows // rows))):
                plan = functools.partial(model.plan_score, x_rows, kind, k=k, passes=passes)
                assert _admitted(plan), (model.stored.tag, kind, x_rows, k)
            spec = model.stored.graph("discriminator") if kind == "discriminator" else None
            spec = spec or model.stored.graph(
                "scorer", limits.scoring.source_kind(model.stored) if kind == "classify" else kind
            )
            rate = (
                limits.row_limit(model.cost(spec), limits.MAX_DRAW_ROWS, limits.work_seconds(False)) // passes
            )
            if 2 * graph_rows <= rate:  # memory set it: the next power of two is refused
                lowered += 1
                more = min(MAX_ROWS, limits.row_cap(model), 2 * graph_rows)
                k = 2 * graph_rows // more
                assert not _admitted(functools.partial(model.plan_score, more, kind, k=k, passes=passes))
    assert lowered


def test_the_most_latent_rows_published_are_admitted_and_fit_a_body(loaded):
    seen = 0
    for model in loaded:
        most = limits.latent_limits(model)
        if not most:
            continue
        seen += 1
        dim = latent.latent_dim(model.stored)
        specs = {"encode": [latent.encoder(model.stored)], "decode": [latent.decoder(model.stored)]}
        specs["decode"].append(latent.decoder(model.stored, True))
        for op, found in specs.items():
            width = model.dim if op == "encode" else dim
            levels = model.stored.data.get("levels") if op == "encode" else None
            assert most[op] <= json_rows(width, levels)
            for spec in filter(None, found):
                rows = np.zeros((most[op], width), np.float32)
                request = latent.LatentRequest(spec, rows, spec.kind == "sample")
                assert _admitted(lambda r=request, m=model: latent.plan(m, r)), (model.stored.tag, op)
    assert seen


def test_the_most_two_sample_rows_published_fit_every_test(loaded):
    bound = 0
    for model in loaded:
        rows = limits.two_sample_rows(model)
        if rows is None:
            continue
        held = limits.two_sample_held(model.dim, rows)
        assert _admitted(lambda m=model, r=rows, h=held: m.plan_sample(r, held=h)), model.stored.tag
        for test in ("mmd", "c2st"):
            assert limits.two_sample_fits(model, rows, rows, test, MAX_PERMUTATIONS), (model.stored.tag, test)
        if rows < MAX_TWO_SAMPLE:
            bound += 1
            more = rows + 1
            held = limits.two_sample_held(model.dim, more)
            assert not (
                _admitted(lambda m=model, r=more, h=held: m.plan_sample(r, held=h))
                and all(
                    limits.two_sample_fits(model, more, more, t, MAX_PERMUTATIONS) for t in ("mmd", "c2st")
                )
            ), model.stored.tag
    assert bound


@pytest.mark.parametrize(
    ("n_x", "n_y", "dim", "permutations"), [(300, 200, 700, 200), (100, 400, 50, 2000), (500, 500, 5, 64)]
)
def test_the_two_sample_tests_stay_within_their_stated_working_memory(n_x, n_y, dim, permutations):
    """numpy reports its allocations to tracemalloc: the peak of each test, its inputs aside, is
    within what mmd_bytes and c2st_bytes state (what the service admits a request by)."""
    import tracemalloc

    from registry.runtime.two_sample import c2st, c2st_bytes, mmd_bytes, mmd_test

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n_x, dim)), rng.normal(size=(n_y, dim))
    for run, stated in (
        (lambda: mmd_test(x, y, permutations=permutations), mmd_bytes(n_x, n_y, dim, permutations)),
        (lambda: c2st(x, y), c2st_bytes(n_x, n_y, dim)),
    ):
        tracemalloc.start()
        try:
            run()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= stated
        assert peak >= 0.7 * stated  # stated, not guessed: a bound far above would waste the budget
