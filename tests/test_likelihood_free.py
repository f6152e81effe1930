"""Likelihood-free checks: the optimal discriminator, two-sample test calibration, the GAN."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from registry.datasets import load_dataset
from registry.datasets.toys import TOYS
from registry.pipeline.classifier import critic_logits, train_critic, value
from registry.pipeline.evaluate import held_out_rows
from registry.pipeline.export import ExportError
from registry.runtime.models import CapabilityError, LoadedModel
from registry.runtime.scoring import score
from registry.runtime.two_sample import auc, binomial_tail, c2st, jsd_lower_bound, mmd_test

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
    jsd = jsd_8gaussians_vs_p()
    assert 0 < jsd < math.log(2)
    assert abs(value(lr, lf) - (2 * jsd - math.log(4))) <= 0.03


@functools.cache
def jsd_8gaussians_vs_p() -> float:
    """JSD(8gaussians || p) by numerical integration on a grid covering both densities."""
    g = np.linspace(-10, 10, 1000)
    xx, yy = np.meshgrid(g, g)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    a, b = np.exp(TOYS["8gaussians"].log_density(pts)), np.exp(p_log_density(pts))
    m = (a + b) / 2
    cell = (g[1] - g[0]) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(
            0.5 * np.sum(np.where(a > 0, a * np.log(a / m), 0)) * cell
            + 0.5 * np.sum(np.where(b > 0, b * np.log(b / m), 0)) * cell
        )


def test_jsd_lower_bound_is_the_jsd_at_the_optimal_discriminator_and_zero_without_one():
    """With the exact logit log pi(x)/p(x) the bound (V + log 4) / 2 is JSD(pi || p) itself."""
    toy, rng = TOYS["8gaussians"], np.random.default_rng(6)
    real, fake = toy.sample(50_000, rng), p_sample(50_000, rng)
    logit = lambda x: toy.log_density(x) - p_log_density(x)  # noqa: E731
    lr, lf = logit(real), logit(fake)
    got = jsd_lower_bound(lr, lf)
    # The bound is half a sum of two sample means: 5 of its standard errors (a ~1e-6 event).
    se = 0.5 * math.hypot(np.logaddexp(0, -lr).std(), np.logaddexp(0, lf).std()) / math.sqrt(50_000)
    jsd = jsd_8gaussians_vs_p()
    assert 0.1 < jsd and 5 * se < 0.02  # a real gap, measured finely enough to matter
    assert got["jsd_lower_bound"] == pytest.approx(jsd, abs=5 * se)
    # A discriminator that cannot tell (D = 1/2) proves nothing: V = -log 4 and the bound is 0;
    # one that is wrong (the logit reversed) has V below -log 4, and the bound stays 0.
    blind = jsd_lower_bound(np.zeros(10), np.zeros(10))
    assert blind["value"] == pytest.approx(-math.log(4)) and blind["jsd_lower_bound"] == 0.0
    assert jsd_lower_bound(-lr, -lf)["jsd_lower_bound"] == 0.0


def test_c2st_rejects_a_sample_against_its_own_distribution_no_more_often_than_its_level():
    """Under the null the held-out accuracy is at most Binomial(n_test, 1/2): at level 0.05 the
    test rejects at most 5% of the time (less: the binomial tail is conservative for a k-NN)."""
    rng = np.random.default_rng(7)
    runs = 400
    rejections = sum(
        c2st(rng.normal(size=(100, 2)), rng.normal(size=(100, 2)), seed=i)["p_value"] <= 0.05
        for i in range(runs)
    )
    # The most rejections a level-0.05 test gives in 400 runs but once in 10,000 sessions (38).
    allowed = binom.isf(1e-4, runs, 0.05)
    assert rejections <= allowed, (rejections, allowed)


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
    real = load_dataset("8gaussians").test
    result = score(loaded, real[:500], "discriminator")
    assert result.kind == "discriminator" and result.bits_per_dim is None
    # At this budget a k-NN still tells the generator's samples from data (stored C2ST ~0.98),
    # and so must the GAN's own discriminator: P(real) ranks held-out rows above samples (AUC
    # ~0.96 measured; 0.8 leaves ~15 of its standard errors). A D stuck at 1/2 gives 0.5.
    fake = score(loaded, x, "discriminator").scores
    labels = np.r_[np.ones(500), np.zeros(500)]
    two = stored.metrics["test"]["two_sample"]
    assert two["c2st"]["accuracy"] > 0.9
    assert auc(np.r_[result.scores, fake], labels) > 0.8
    # The stored JSD bound is this discriminator's, on the 1,000 held-out rows and as many
    # samples (seed 0) that evaluation used, and that discriminator is informative.
    held = held_out_rows(real, 1000, seed=0)
    again = jsd_lower_bound(loaded.logits(held), loaded.logits(loaded.sample(1000, seed=0)))
    assert two["jsd"]["jsd_lower_bound"] == pytest.approx(again["jsd_lower_bound"], abs=1e-6)
    assert 0.1 < two["jsd"]["jsd_lower_bound"] < math.log(2)
    assert stored.meta["train"]["history"], "training logs losses and quality"


@pytest.mark.slow
def test_conditional_gan_on_digits(train_model):
    """A conditional GAN, G(z, y) against a projection discriminator D(x, y), trained on labelled
    digits: both graphs take the label (parity checked in training), the label changes a seeded
    sample, the discriminator judges a row given a label (and refuses rows without one), and
    the stored JSD bound is D's on the held-out rows with their own labels against samples with
    the labels they were drawn with."""
    from registry.runtime.rows import InputError

    stored = train_model("gan", "digits", 3, hidden=32, conditional=True, name="gan-digits-cond")
    assert stored.capabilities == ["discriminate", "sample"]
    assert {stored.graph("sampler").condition.classes, stored.graph("discriminator").condition.classes} == {
        10
    }
    loaded = LoadedModel(stored)
    assert loaded.kinds == ["discriminator"]
    a, b = np.full(6, 3), np.full(6, 8)
    assert np.array_equal(loaded.sample(6, seed=1, labels=a), loaded.sample(6, seed=1, labels=a))
    assert not np.array_equal(loaded.sample(6, seed=1, labels=a), loaded.sample(6, seed=1, labels=b))
    data = load_dataset("digits", conditional=True)
    x, y = data.test[:20], data.labels["test"][:20]
    with pytest.raises(InputError, match="send one label per row"):
        score(loaded, x, "discriminator")
    p_real = score(loaded, x, "discriminator", labels=y).scores
    assert np.all((p_real > 0) & (p_real < 1))
    assert not np.allclose(p_real, score(loaded, x, "discriminator", labels=(y + 1) % 10).scores)
    two = stored.metrics["test"]["two_sample"]
    rows = two["rows"]
    fake_labels = loaded.labels_for(rows, None, 0)
    real_logits = loaded.logits(
        held_out_rows(data.test, rows, 0), labels=held_out_rows(data.labels["test"], rows, 0)
    )
    fake_logits = loaded.logits(loaded.sample(rows, seed=0), labels=fake_labels)
    again = jsd_lower_bound(real_logits, fake_logits)
    assert two["jsd"]["jsd_lower_bound"] == pytest.approx(again["jsd_lower_bound"], abs=1e-6)


@pytest.mark.slow
def test_critic_is_stored_as_a_new_version_and_tells_a_poor_model_from_data(trained):
    base, critic = trained["flow-8gaussians"], trained["flow-8gaussians+critic"]
    assert critic.name == base.name and critic.version != base.version
    assert critic.meta["parent"] == base.tag
    assert "discriminate" in critic.capabilities and "log_prob" in critic.capabilities
    assert LoadedModel(critic).kinds == ["log_prob", "discriminator"]
    # Independent pixels are nothing like digits: on ~360 held-out digits and as many samples a
    # working critic is right almost every time (a coin would need 5 sd luck to pass 0.6).
    poor = trained["gaussian-digits-critic"].metrics["critic"]
    assert poor["n_real"] == len(load_dataset("digits").test) == poor["n_model"]
    assert poor["c2st_accuracy"] > 0.9 and poor["c2st_p_value"] < 1e-30 and poor["auc"] > 0.95
    # Near-separable classes give V near 0, so the bound nears its ceiling log 2 = 0.69.
    assert poor["jsd_lower_bound"] > 0.3
    # The flow fits 8gaussians closely: its critic does far worse than the poor model's.
    good = critic.metrics["critic"]
    assert good["c2st_accuracy"] < poor["c2st_accuracy"] - 0.2 and good["auc"] < poor["auc"] - 0.2
    assert good["jsd_lower_bound"] < poor["jsd_lower_bound"] - 0.2


@pytest.fixture(scope="module")
def gauss_null(train_model):
    """A Gaussian model on digits for the critic's own checks (not the served models)."""
    return train_model("gaussian", "digits", name="gauss-null")


@pytest.mark.slow
def test_critic_does_not_reject_a_model_against_its_own_samples(gauss_null, monkeypatch):
    import registry.pipeline.critic as critic_module

    # The model's "data" is its own samples: fitted on 1,250 of them, judged on 2,000 more.
    loaded = LoadedModel(gauss_null)
    own = SimpleNamespace(
        fingerprint=gauss_null.data["fingerprint"],
        validation=loaded.sample(len(load_dataset("digits").validation), seed=100),
        test=loaded.sample(2000, seed=101),
    )
    monkeypatch.setattr(critic_module, "load_dataset", lambda name: own)
    m = critic_module.attach_critic(gauss_null.tag, steps=300, replace=True).metrics["critic"]
    # Held out, the critic's accuracy is at most Binomial(4,000, 1/2) / 4,000 (sd 0.008) under
    # the null, so p <= 1e-4 happens at most once in 10,000 sessions; a critic that saw the rows
    # it is judged on (measured: p ~ 1e-9) or a p-value from the wrong tail rejects here.
    assert m["n_real"] == m["n_model"] == 2000
    assert m["c2st_p_value"] > 1e-4 and abs(m["c2st_accuracy"] - 0.5) < 0.035, m
    assert abs(m["auc"] - 0.5) < 0.05 and m["jsd_lower_bound"] < 0.01, m


@pytest.mark.slow
def test_critic_whose_export_differs_is_refused(gauss_null, monkeypatch):
    """The critic's parity is checked at export: a graph off by 1e-3 in the logit is refused."""
    import registry.pipeline.export as export_module
    from registry.pipeline.critic import attach_critic
    from registry.runtime.store import get_model

    before = get_model("gauss-null").version
    honest = export_module.export_torch

    def off_by_a_little(module, inputs, output, path):
        import torch

        class Shifted(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, x):
                return self.inner(x) + 1e-3

        honest(Shifted().eval(), inputs, output, path)

    monkeypatch.setattr(export_module, "export_torch", off_by_a_little)
    with pytest.raises(ExportError, match="critic"):
        attach_critic("gauss-null", steps=20, replace=True)
    assert get_model("gauss-null").version == before  # nothing stored
