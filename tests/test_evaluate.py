"""The stored evaluation: what it costs is bounded, whatever the sampler."""

from __future__ import annotations

from types import SimpleNamespace

from registry.pipeline.evaluate import (
    EVAL_DRAWS,
    MIN_TWO_SAMPLE_ROWS,
    SAMPLE_SECONDS,
    SCORE_SECONDS,
    bound_draws,
    two_sample_rows,
)


class _Sampler:
    """A model whose sampling plan takes ``per_row`` seconds a row."""

    def __init__(self, per_row: float) -> None:
        self.per_row = per_row

    def plan_sample(self, n: int) -> SimpleNamespace:
        return SimpleNamespace(seconds=n * self.per_row)

    def plan_score(self, rows: int, kind: str, passes: int = 1) -> SimpleNamespace:
        assert kind == "bound"
        return SimpleNamespace(seconds=rows * passes * self.per_row)


def test_the_two_sample_tests_draw_what_their_time_allows():
    assert two_sample_rows(_Sampler(1e-4), 900) == 900  # cheap samplers: every test row
    assert two_sample_rows(_Sampler(1e-4), 5000) == 1000
    assert two_sample_rows(_Sampler(0.25), 900) == int(SAMPLE_SECONDS / 0.25)
    assert two_sample_rows(_Sampler(30.0), 900) == MIN_TWO_SAMPLE_ROWS  # never fewer


def test_the_test_bound_takes_the_draws_its_time_allows():
    assert bound_draws(_Sampler(1e-4), 900) == EVAL_DRAWS  # digits-sized scorers: unchanged
    assert bound_draws(_Sampler(SCORE_SECONDS / 900 / 2.5), 900) == 2
    assert bound_draws(_Sampler(1.0), 900) == 1  # never none
