"""What every conditional family's model must do, checked on a model trained on digits' classes:
one helper the families' tests share (tests/test_flow.py, test_vae.py, test_autoregressive.py).

- a seeded sample of one label repeats, and another label changes it;
- log p(x|y) with labels is the per-label score of each row's own label;
- the marginal, without labels, is log sum_y p(y) exp(s_y) of the per-label scores s_y (common
  noise: the same draws for every class), so it lies between the best class's joint term and
  that term + log K;
- the Bayes classifier's posterior sums to 1 and picks the largest joint term.
"""

from __future__ import annotations

import math

import numpy as np

from registry.datasets import load_dataset
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import log_sum_exp, score


def check_conditional_contract(loaded: LoadedModel, kind: str, rows: int = 20, seed: int = 4) -> None:
    a, b = np.full(6, 3), np.full(6, 8)
    assert np.array_equal(loaded.sample(6, seed=1, labels=a), loaded.sample(6, seed=1, labels=a))
    assert not np.array_equal(loaded.sample(6, seed=1, labels=a), loaded.sample(6, seed=1, labels=b))
    data = load_dataset("digits", conditional=True)
    x, y = data.test[:rows], data.labels["test"][:rows]
    given = score(loaded, x, kind, seed=seed, labels=y)
    assert given.given == "labels" and np.all(np.isfinite(given.scores))
    classes = loaded.classes or 0
    per_class = np.stack(
        [score(loaded, x, kind, seed=seed, labels=np.full(len(x), c)).scores for c in range(classes)], 1
    )
    np.testing.assert_allclose(per_class[np.arange(len(x)), y], given.scores, atol=1e-4)
    joint = per_class + loaded.class_log_prior()[None, :]
    marginal = score(loaded, x, kind, seed=seed)
    assert marginal.given == "marginal"
    np.testing.assert_allclose(marginal.scores, log_sum_exp(joint), atol=1e-4)
    top = joint.max(1)
    assert np.all(marginal.scores >= top - 1e-9) and np.all(marginal.scores <= top + math.log(classes) + 1e-9)
    classified = score(loaded, x, "classify", seed=seed)
    np.testing.assert_allclose(classified.probabilities.sum(1), 1.0, atol=1e-9)
    assert np.array_equal(classified.labels, joint.argmax(1))
