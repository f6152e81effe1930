"""The adaptive batcher: concurrent calls share runs, each caller gets its own rows back."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.batching import Batcher


def test_concurrent_calls_are_batched_and_split_back():
    calls = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        time.sleep(0.01)  # a slow graph lets requests pile up
        return feeds["x"].sum(1) * 2

    batcher = Batcher(run, max_rows=64)
    results = {}

    def client(i: int) -> None:
        x = np.full((i % 3 + 1, 4), float(i))
        results[i] = batcher({"x": x})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 40
    for i, out in results.items():
        np.testing.assert_array_equal(out, np.full(i % 3 + 1, 8.0 * i))
    assert len(calls) < 40 and max(calls) <= 64 and sum(calls) == sum(i % 3 + 1 for i in range(40))


def test_errors_reach_every_waiter_and_batcher_recovers():
    fail = {"on": True}

    def run(feeds):
        time.sleep(0.005)
        if fail["on"]:
            raise RuntimeError("graph failed")
        return feeds["x"][:, 0]

    batcher = Batcher(run)
    errors = []

    def client() -> None:
        try:
            batcher({"x": np.ones((1, 2))})
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(errors) == 8
    fail["on"] = False
    assert batcher({"x": np.ones((3, 2))}).shape == (3,)


def test_single_call_runs_alone():
    batcher = Batcher(lambda feeds: feeds["x"] + 1)
    assert batcher({"x": np.zeros((2, 1))}) == pytest.approx(np.ones((2, 1)))
    assert batcher.runs == 1
