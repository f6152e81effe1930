"""Likelihood-free checks: the optimal discriminator, two-sample test calibration, the GAN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from registry.datasets import load_dataset
from registry.datasets.toys import TOYS
from registry.pipeline.classifier import critic_logits, train_critic, value
from registry.runtime.models import CapabilityError, LoadedModel
from registry.runtime.scoring import score
from registry.runtime.two_sample import auc, binomial_tail, c2st, mmd_test

# p: a fixed two-component Gaussian mixture, the "model" against the 8-Gaussians data pi.
P_CENTRES = np.array([[0.0, 0.0], [2.0, 1.0]])
P_STD = np.array([2.0, 1.0])
P_WEIGHTS = np.array([0.6, 0.4])


def p_sample(n: int, rng: np.random.Generator) -> np.ndarray:
    k = rng.choice(2, n, p=P_WEIGHTS)
    return P_CENTRES[k] + rng.normal(size=(n, 2)) * P_STD[k][:, None]


def p_log_density(x: np.ndarray) -> np.ndarray:
    d = ((x[:, None, :] - P_CENTRES[None]) ** 2).sum(-1)
    lp = -d / (2 * P_STD**2) - np.log(2 * np.pi * P_STD**2) + np.log(P_WEIGHTS)
    top = lp.max(1, keepdims=True)
    return top[:, 0] + np.log(np.exp(lp - top).sum(1))


def test_discriminator_converges_to_the_optimal_one():
    """D*(x) = pi / (pi + p), and at D* the value is 2 JSD(pi || p) - log 4."""
    toy = TOYS["8gaussians"]
    rng = np.random.default_rng(0)
    critic = train_critic(
        toy.sample(100_000, rng), p_sample(100_000, rng), steps=6000, batch_size=1024, seed=0
    )
    real, fake = toy.sample(20_000, rng), p_sample(20_000, rng)
    lr, lf = critic_logits(critic, real), critic_logits(critic, fake)
    both = np.concatenate([real, fake])
    d_star = 1 / (1 + np.exp(p_log_density(both) - toy.log_density(both)))
    d = 1 / (1 + np.exp(-np.concatenate([lr, lf])))
    assert np.abs(d - d_star).mean() <= 0.05
    # JSD by numerical integration on a grid covering both densities.
    g = np.linspace(-10, 10, 1000)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    a, b = np.exp(toy.log_density(pts)), np.exp(p_log_density(pts))
    m = (a + b) / 2
    cell = (g[1] - g[0]) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        jsd = (
            0.5 * np.sum(np.where(a > 0, a * np.log(a / m), 0)) * cell
            + 0.5 * np.sum(np.where(b > 0, b * np.log(b / m), 0)) * cell
        )
    assert 0 < jsd < math.log(2)
    assert abs(value(lr, lf) - (2 * jsd - math.log(4))) <= 0.03


def test_mmd_is_calibrated_under_the_null():
    rng = np.random.default_rng(1)
    rejections = sum(
        mmd_test(rng.normal(size=(100, 2)), rng.normal(size=(100, 2)), permutations=200, seed=i)["p_value"]
        <= 0.05
        for i in range(200)
    )
    assert 0.02 <= rejections / 200 <= 0.08


def test_mmd_rejects_a_mostly_noise_mixture_every_time():
    """0.01 p + 0.99 noise has likelihood within log 100 of p, but its samples are noise."""
    toy = TOYS["8gaussians"]
    rng = np.random.default_rng(2)
    for i in range(20):
        real = toy.sample(500, rng)
        is_model = rng.random(500) < 0.01
        mixture = np.where(is_model[:, None], toy.sample(500, rng), rng.uniform(-6, 6, size=(500, 2)))
        assert mmd_test(real, mixture, permutations=200, seed=i)["p_value"] <= 0.05


def test_c2st_null_and_alternative():
    rng = np.random.default_rng(3)
    same = c2st(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)), seed=0)
    assert 0.4 < same["accuracy"] < 0.6 and same["p_value"] > 0.01
    shifted = c2st(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) + 1.0, seed=0)
    assert shifted["accuracy"] > 0.65 and shifted["p_value"] < 1e-6


def test_binomial_tail_and_auc_match_references():
    for k, n in [(0, 10), (5, 10), (60, 100), (100, 100)]:
        assert binomial_tail(k, n) == pytest.approx(binom.sf(k - 1, n, 0.5), rel=1e-9, abs=1e-15)
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=300), 1)  # ties on purpose
    labels = rng.random(300) < 0.4
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.slow
def test_gan_samples_discriminates_and_has_no_likelihood(trained):
    stored = trained["gan-8gaussians"]
    assert stored.capabilities == ["discriminate", "sample"]
    loaded = LoadedModel(stored)
    assert loaded.kinds == ["discriminator"]
    with pytest.raises(CapabilityError, match="it has: discriminator"):
        score(loaded, np.zeros((2, 2)), "log_prob")
    x = loaded.sample(500, seed=0)
    assert x.shape == (500, 2) and np.all(np.isfinite(x))
    result = score(loaded, load_dataset("8gaussians").test[:100], "discriminator")
    kind, prob, bpd = result.kind, result.scores, result.bits_per_dim
    assert kind == "discriminator" and bpd is None and np.all((prob >= 0) & (prob <= 1))
    two = stored.metrics["test"]["two_sample"]
    assert {"mmd", "c2st", "jsd"} <= set(two) and two["jsd"]["jsd_lower_bound"] >= 0
    assert stored.meta["train"]["history"], "training logs losses and quality"


@pytest.mark.slow
def test_critic_is_stored_as_a_new_version(trained):
    base, critic = trained["flow-8gaussians"], trained["flow-8gaussians+critic"]
    assert critic.name == base.name and critic.version != base.version
    assert critic.meta["parent"] == base.tag
    assert "discriminate" in critic.capabilities and "log_prob" in critic.capabilities
    m = critic.metrics["critic"]
    assert 0 <= m["c2st_accuracy"] <= 1 and 0 <= m["auc"] <= 1 and m["n_real"] > 0
    assert critic.meta["parity"]["critic"] <= 1e-4
    assert LoadedModel(critic).kinds == ["log_prob", "discriminator"]
