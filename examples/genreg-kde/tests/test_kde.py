"""The example plugin's own tests, written as a plugin author writes them: with the pytest
fixtures genreg ships (``genreg_store``, ``check_family``; genreg registers them under
``pytest11``, so installing genreg is all it takes). `make test` runs them with genreg's own."""

from __future__ import annotations

import math

import numpy as np
import pytest
from genreg_kde.kde import KDEFamily

from registry.datasets import load_dataset
from registry.pipeline.export import ExportError
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import score
from registry.runtime.store import list_models

EPS = 0.3
CENTRES = 400


def test_kde_scores_its_kernel_density_and_samples_near_its_centres(check_family, genreg_store):
    data = load_dataset("8gaussians")
    stored = check_family(KDEFamily, "8gaussians", eps=EPS, max_points=CENTRES)
    # The private store holds this model and nothing else (not the session's models).
    assert [m.tag for m in list_models()] == [stored.tag]
    assert genreg_store in stored.path.parents

    loaded = LoadedModel(stored)
    x = data.test[:300].astype(np.float64)
    # p(x) = 1/n sum_i N(x | x_i, eps^2 I) over the first 400 training rows, in closed form.
    centres = data.train[:CENTRES].astype(np.float64)
    d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    a = -d2 / (2 * EPS**2)
    top = a.max(1)
    expected = (
        top + np.log(np.exp(a - top[:, None]).sum(1)) - math.log(CENTRES) - math.log(2 * math.pi * EPS**2)
    )
    result = score(loaded, x.astype(np.float32), "log_prob")
    assert result.kind == "log_prob"
    np.testing.assert_allclose(result.scores, expected, atol=1e-3)  # float32 graphs

    # Each sample is a centre plus N(0, eps^2 I) noise: within 6 eps of one (a miss has
    # probability exp(-18) per sample), and on average about eps * sqrt(pi / 2) from it or closer.
    samples = loaded.sample(500, seed=0).astype(np.float64)
    nearest = np.sqrt(((samples[:, None, :] - centres[None]) ** 2).sum(-1).min(1))
    assert nearest.max() < 6 * EPS
    assert np.array_equal(samples, loaded.sample(500, seed=0))


def test_kde_on_discrete_data_has_a_bound_and_samples_on_the_lattice(check_family):
    stored = check_family(KDEFamily, "digits", eps=0.5, max_points=200)
    assert stored.capabilities == ["bound", "sample"]
    x = LoadedModel(stored).sample(64, seed=1)
    assert x.shape == (64, 64) and set(np.unique(x)) <= set(range(17))
    # A bound on log P(x) <= 0 for a probability mass, so it is negative on every row.
    bound = score(LoadedModel(stored), load_dataset("digits").test[:50], "bound", seed=0).scores
    assert np.all(bound < 0)


class _OffByAMilliNat(KDEFamily):
    """A reference that disagrees with its own exported graph by 1e-3 nats."""

    def log_prob(self, model, x, noise):
        return super().log_prob(model, x, noise) + 1e-3


def test_check_family_refuses_a_family_whose_graphs_differ_from_its_reference(check_family):
    with pytest.raises(ExportError, match="scorer:log_prob"):
        check_family(_OffByAMilliNat, "8gaussians", eps=EPS, max_points=50)
    assert list_models() == []  # nothing stored
