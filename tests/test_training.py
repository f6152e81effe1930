"""The shared training loop: a time budget is spent, not cut short by a slow first epoch."""

from __future__ import annotations

import time

import torch

from plugins.common.training import fit
from registry.contract.family import TrainControl


def _fit(module, train, loss_fn, validate, budget: float):
    return fit(
        module,
        train,
        loss_fn=loss_fn,
        validate=validate,
        control=TrainControl(seed=0, progress=False, time_budget=budget),
        epochs=1000,
        batch_size=64,
        lr=1e-3,
        weight_decay=0.0,
        patience=1000,
        grad_clip=1.0,
    )


def test_time_budget_plan_is_not_cut_short_by_a_slow_first_epoch():
    module = torch.nn.Linear(2, 1)
    train = torch.randn(640, 2)
    calls = [0]

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calls[0] += 1
        # Warm-up: the first step is slow, as a flow's data-dependent initialisation is.
        time.sleep(0.4 if calls[0] == 1 else 0.01)
        return (module(batch) ** 2).mean()

    budget = 2.0
    # always improving: no early stop
    result = _fit(module, train, loss_fn, lambda: float(calls[0] and -calls[0]), budget)
    assert result.stopped == "time-budget"
    # One epoch is ~0.1 s after the first (0.5 s): judged by the first alone, the plan would
    # have been 4 epochs and 1 s.
    assert result.epochs >= 10, result
    assert result.seconds >= 0.7 * budget, result


def test_an_epoch_longer_than_the_budget_stops_at_the_deadline():
    """patches-rgb's epoch outlasts a 10-minute budget on 2 cores: the deadline holds mid-epoch."""
    module = torch.nn.Linear(2, 1)
    train = torch.randn(6400, 2)  # 100 steps of 20 ms: a 2-s epoch

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        time.sleep(0.02)
        return (module(batch) ** 2).mean()

    start = time.monotonic()
    result = _fit(module, train, loss_fn, lambda: 0.0, 0.6)
    assert result.stopped == "time-budget" and result.epochs == 1, result
    assert time.monotonic() - start < 1.5  # not the 2-s epoch
