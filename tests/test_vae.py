"""The VAE family: ELBO <= IWAE(k) bounds, exact marginal likelihood, ELBO surgery, MIG."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
from conditional_contract import check_conditional_contract

from registry.datasets import load_dataset
from registry.pipeline.surgery import elbo_surgery, encode, mig
from registry.runtime import latent
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import bound_estimates
from registry.runtime.store import get_model

pytestmark = pytest.mark.slow


def test_elbo_below_iwae8_below_iwae64_on_digits(trained):
    loaded = LoadedModel(trained["vae-digits"])
    x = load_dataset("digits").test
    lw = loaded.log_weights(x, seed=3, k=64)
    elbo = lw.mean(1)
    iwae8 = np.mean([bound_estimates(lw[:, i : i + 8])[1] for i in range(0, 64, 8)], axis=0)
    iwae64 = bound_estimates(lw)[1]
    se = lambda a: a.std() / math.sqrt(len(a))  # noqa: E731
    assert elbo.mean() <= iwae8.mean() + 3 * se(iwae8 - elbo)
    assert iwae8.mean() <= iwae64.mean() + 3 * se(iwae64 - iwae8)
    assert iwae64.mean() - elbo.mean() > 0.1  # a real gap, not noise
    # Per row, with the same draws, log-mean-exp >= mean-log (Jensen): exactly, not only on average.
    assert np.all(iwae64 >= elbo - 1e-9)
    test = trained["vae-digits"].metrics["test"]
    assert test["iwae64_bits_per_dim"] < test["bits_per_dim"] < math.log2(17)


def test_iwae_matches_exact_marginal_likelihood_on_a_1d_latent(train_model):
    """p(x) = integral of p(x|z) p(z) dz by quadrature over z, against IWAE with k = 1000."""
    stored = train_model(
        "vae", "moons", latent=1, hidden=32, depth=1, batch_size=256, epochs=5, name="vae-tiny"
    )
    loaded = LoadedModel(stored)
    x = load_dataset("moons").test[:40].astype(np.float64)
    z = np.linspace(-9, 9, 3001)
    params = loaded.run(stored.graph("decoder", "params"), {"z": z[:, None].astype(np.float32)})
    params = params.astype(np.float64)
    mean, log_var = np.split(params, 2, axis=1)
    log_lik = (
        -0.5
        * (math.log(2 * math.pi) + log_var[None] + (x[:, None] - mean[None]) ** 2 / np.exp(log_var[None]))
    ).sum(-1)
    log_prior = -0.5 * (math.log(2 * math.pi) + z**2)
    integrand = log_lik + log_prior[None]
    top = integrand.max(1, keepdims=True)
    exact = top[:, 0] + np.log(np.trapezoid(np.exp(integrand - top), z, axis=1))
    elbo, iwae = bound_estimates(loaded.log_weights(x, seed=0, k=1000))
    assert np.all(elbo <= exact + 1e-3)
    assert np.abs(iwae - exact).mean() < 0.05, np.abs(iwae - exact).max()


@pytest.mark.parametrize("penalty", ["kl", "tc"])
def test_surgery_terms_add_up_for_beta_vae(train_model, penalty):
    stored = train_model(
        "vae", "shapes", beta=4.0, latent=6, epochs=10, penalty=penalty, name=f"bvae-shapes-{penalty}"
    )
    loaded = LoadedModel(get_model(stored.tag))
    x = load_dataset("shapes").test
    s = elbo_surgery(loaded, x, draws=8, seed=1)
    assert (s["beta"], s["penalty"]) == (4.0, penalty)
    assert abs(s["sum_minus_elbo_beta"]) <= 4 * s["monte_carlo_stderr"] + 1e-6
    assert 0 <= s["mutual_information"] <= s["log_n"] + 1e-6
    assert s["marginal_kl"] >= -4 * s["monte_carlo_stderr"]
    weighed = s["kl_posterior_prior"] if penalty == "kl" else s["total_correlation"]
    assert s["elbo_beta"] == pytest.approx(s["reconstruction"] - s["kl_posterior_prior"] - 3.0 * weighed)
    stored_metrics = stored.metrics["test"]
    assert "surgery" in stored_metrics and 0 <= stored_metrics["mig"]["mig"] <= 1
    assert stored_metrics["mig"]["factors"] == ["shape", "scale", "x", "y"]
    codes, _ = encode(loaded, x)
    assert codes.shape == (len(x), 6)


class _LinearGaussianVAE:
    """Stands in for a LoadedModel (what elbo_surgery reads of one): a 1-D encoder
    q(z|x) = N(0.8 x, s(x)^2) and decoder p(x|z) = N(z, 1), whose terms are known exactly."""

    SCALE: ClassVar[dict[float, float]] = {-1.0: 0.3, 0.0: 0.5, 2.0: 0.4}

    def __init__(self) -> None:
        # Graphs as stored before they had kinds: the encoder's output, the decoder's parameters.
        graph = lambda role, kind=None: SimpleNamespace(role=role, kind=None)  # noqa: E731
        self.stored = SimpleNamespace(meta={"config": {"beta": 1.0}}, data={}, graph=graph)

    def run(self, spec: SimpleNamespace, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if spec.role == "encoder":
            x = feeds["x"][:, 0].astype(np.float64)
            log_var = 2 * np.log([self.SCALE[v] for v in x])
            return np.stack([0.8 * x, log_var], 1)
        return np.concatenate([feeds["z"], np.zeros_like(feeds["z"])], -1)  # mean z, log var 0


def test_surgery_terms_match_an_exact_aggregate_posterior():
    """Three distinct points (100, 200, 300 copies): q(z) is exactly the 3-component mixture
    the estimator sums over, so I_q[x,z] and KL(q(z)||p(z)) are 1-D integrals, done here by
    quadrature. The sum check in the test above cannot see an error in log q(z) (it cancels);
    this one does: a wrong sign or a missing log N moves either term by about a nat."""
    vae = _LinearGaussianVAE()
    values, counts = np.array([-1.0, 0.0, 2.0]), np.array([100, 200, 300])
    x = np.repeat(values, counts)[:, None].astype(np.float32)
    draws = 64
    s = elbo_surgery(vae, x, draws=draws, seed=0)

    weights = counts / counts.sum()
    means, scales = 0.8 * values, np.array([vae.SCALE[v] for v in values])
    z = np.linspace(-8, 8, 20001)
    log_comp = -0.5 * (
        math.log(2 * math.pi) + 2 * np.log(scales[:, None]) + ((z - means[:, None]) / scales[:, None]) ** 2
    )
    comp = np.exp(log_comp)
    log_q = np.log(weights @ comp)
    log_p = -0.5 * (math.log(2 * math.pi) + z**2)
    # Per point k: E_q(z|x_k)[log q(z|x_k) - log q(z)]; then the first two moments over the data.
    mi_k = np.trapezoid(comp * (log_comp - log_q), z, axis=1)
    mi_sq_k = np.trapezoid(comp * (log_comp - log_q) ** 2, z, axis=1)
    mutual_info, mi_var = weights @ mi_k, weights @ mi_sq_k - (weights @ mi_k) ** 2
    q = weights @ comp
    marginal_kl = np.trapezoid(q * (log_q - log_p), z)
    kl_var = np.trapezoid(q * (log_q - log_p) ** 2, z) - marginal_kl**2
    # Monte Carlo over N * draws = 38,400 draws: 6 standard errors (each term's own sd, from the
    # same quadrature) makes a false failure a ~1e-9 event; the defects above move a term ~1 nat.
    rows = len(x) * draws
    assert 0.5 < mutual_info < math.log(3)  # far from both ends: the check is not vacuous
    assert s["mutual_information"] == pytest.approx(mutual_info, abs=6 * math.sqrt(mi_var / rows))
    assert s["marginal_kl"] == pytest.approx(marginal_kl, abs=6 * math.sqrt(kl_var / rows))
    # Closed forms: KL(N(m, s^2) || N(0, 1)) and E_q log N(x; z, 1) = -(log 2pi + (x - m)^2 + s^2) / 2.
    kl_closed = weights @ (0.5 * (means**2 + scales**2 - 1 - 2 * np.log(scales)))
    assert s["kl_posterior_prior"] == pytest.approx(kl_closed, rel=1e-6)
    assert s["kl_posterior_prior"] == pytest.approx(mutual_info + marginal_kl, abs=1e-3)
    rec = weights @ (-0.5 * (math.log(2 * math.pi) + (values - means) ** 2 + scales**2))
    # log p(x|z) varies by well under 1 nat across draws: 0.02 is over 6 standard errors.
    assert s["reconstruction"] == pytest.approx(rec, abs=0.02)


class _GivenPosteriors(_LinearGaussianVAE):
    """q(z|x) = N(x, 0.1^2 I): each row is its own posterior's mean."""

    def __init__(self, penalty: str = "kl", beta: float = 1.0) -> None:
        super().__init__()
        self.stored.meta = {"config": {"beta": beta, "penalty": penalty}}

    def run(self, spec: SimpleNamespace, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if spec.role == "encoder":
            x = feeds["x"].astype(np.float64)
            return np.concatenate([x, np.full_like(x, 2 * math.log(0.1))], 1)
        return np.concatenate([feeds["z"], np.zeros_like(feeds["z"])], -1)


@pytest.mark.parametrize(
    ("means", "total_correlation"),
    [
        # Independent dimensions: q(z) is the product of its marginals, TC = 0.
        ([(-3, -3), (-3, 3), (3, -3), (3, 3)], 0.0),
        # One bit shared by both dimensions: q(z) has 2 components, each marginal 2, so
        # log q(z) - log q(z_1) - log q(z_2) = log 1/2 - 2 log 1/2 = log 2 wherever q has mass.
        ([(-3, -3), (3, 3)], math.log(2)),
    ],
)
def test_surgery_splits_the_marginal_kl_into_total_correlation_and_dimension_kl(means, total_correlation):
    x = np.repeat(np.asarray(means, np.float32), 200, axis=0)
    s = elbo_surgery(_GivenPosteriors(), x, draws=4, seed=0)
    assert s["total_correlation"] == pytest.approx(total_correlation, abs=1e-6)
    # Both are expectations of log-density differences over the same draws: they add up exactly.
    assert s["total_correlation"] + s["dimension_kl"] == pytest.approx(s["marginal_kl"], abs=1e-9)
    # 1-D: the aggregate posterior is its only marginal.
    one = elbo_surgery(_LinearGaussianVAE(), np.zeros((50, 1), np.float32), draws=2, seed=0)
    assert one["total_correlation"] == pytest.approx(0.0, abs=1e-12)


def test_a_tc_penalised_models_objective_weighs_only_the_total_correlation():
    x = np.repeat(np.asarray([(-3, -3), (3, 3)], np.float32), 200, axis=0)
    kl = elbo_surgery(_GivenPosteriors("kl", 4.0), x, draws=8, seed=0)
    tc = elbo_surgery(_GivenPosteriors("tc", 4.0), x, draws=8, seed=0)
    assert (kl["penalty"], tc["penalty"]) == ("kl", "tc")
    assert kl["elbo_beta"] == pytest.approx(kl["reconstruction"] - 4 * kl["kl_posterior_prior"])
    assert tc["elbo_beta"] == pytest.approx(
        tc["reconstruction"] - tc["kl_posterior_prior"] - 3 * tc["total_correlation"]
    )
    for s in (kl, tc):
        assert abs(s["sum_minus_elbo_beta"]) <= 4 * s["monte_carlo_stderr"] + 1e-6


@pytest.mark.parametrize(
    ("means", "total_correlation"),
    [([(-3, -3), (-3, 3), (3, -3), (3, 3)], 0.0), ([(-3, -3), (3, 3)], math.log(2))],
)
def test_the_training_penalty_weighs_the_total_correlation_by_beta(means, total_correlation):
    """beta-TCVAE's training penalty, I_q + beta TC + dimension-wise KL = KL(q(z|x)||p(z)) +
    (beta - 1) TC, on the whole data set (the exact mixture): at beta = 1 the closed-form KL of
    each row, exactly, and each unit of beta adds the total correlation, 0 or log 2 as in the
    surgery's test above."""
    import torch

    from plugins.vae.train import kl_to_prior, penalised_kl

    mean = torch.tensor(np.repeat(np.asarray(means, np.float64), 100, axis=0))
    log_var = torch.full_like(mean, 2 * math.log(0.1))
    z = mean + 0.1 * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = penalised_kl(z, mean, log_var, 1.0, None)
    assert torch.equal(one, kl_to_prior(mean, log_var))
    extra = (penalised_kl(z, mean, log_var, 4.0, None) - one).mean().item()
    assert extra == pytest.approx(3 * total_correlation, abs=1e-6)
    # A minibatch of M rows out of N: minibatch-weighted sampling divides each mixture by N M,
    # not M, so TC's estimate rises by (D - 1) log N: row for row, (beta - 1)(D - 1) log N above
    # the exact mixture's.
    size, dims = 5000, mean.shape[1]
    shift = penalised_kl(z, mean, log_var, 4.0, size) - penalised_kl(z, mean, log_var, 4.0, None)
    assert torch.allclose(shift, torch.full_like(shift, 3 * (dims - 1) * math.log(size)), atol=1e-9)


def test_tc_training_uses_the_tc_penalty_and_refuses_data_parallel(monkeypatch):
    import plugins.vae.train as vae_train
    from registry.contract.family import TrainControl

    calls = []
    real = vae_train.penalised_kl
    monkeypatch.setattr(vae_train, "penalised_kl", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    shapes = load_dataset("shapes")
    config = vae_train.VAEConfig(penalty="tc", beta=4.0, latent=3, hidden=16, depth=1, epochs=1)
    vae_train.train_vae(shapes, config.resolve(shapes), TrainControl(seed=0, progress=False))
    # Minibatches weigh by the training split's size; validation takes its whole split (None).
    assert set(calls) == {len(shapes.train), None}
    calls.clear()
    plain = config.model_copy(update={"penalty": "kl"})
    vae_train.train_vae(shapes, plain.resolve(shapes), TrainControl(seed=0, progress=False))
    assert calls == []
    monkeypatch.setattr(vae_train, "data_parallel_world", lambda: (0, 2))
    with pytest.raises(ValueError, match="--nproc 1"):
        vae_train.train_vae(shapes, config.resolve(shapes), TrainControl(seed=0, progress=False))


def test_mig_separates_disentangled_from_random_codes():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 8, size=(2000, 3))
    aligned = factors + 0.1 * rng.standard_normal(factors.shape)
    codes = np.concatenate([aligned, rng.standard_normal((2000, 2))], 1)
    assert mig(codes, factors)["mig"] > 0.8
    assert mig(rng.standard_normal((2000, 5)), factors)["mig"] < 0.05
    mixed = np.stack([factors[:, 0] + factors[:, 1], factors[:, 0] - factors[:, 1], factors[:, 2]], 1)
    assert mig(mixed.astype(float), factors)["mig"] < mig(codes, factors)["mig"]


@pytest.mark.parametrize("arch", ["conv", "broadcast"])
def test_conv_vae_on_images_exports_its_latent_graphs(train_model, arch):
    """arch=conv: a convolutional encoder and decoder whose outputs are laid out as the MLP's
    (each value's levels together, channels last); arch=broadcast: the same encoder and a
    spatial-broadcast decoder. The stored graphs pass parity, and a decoded traversal is an
    image batch of the data's shape. Data that are not images are refused."""
    stored = train_model("vae", "shapes", arch=arch, latent=4, epochs=2, name=f"{arch}-vae-shapes")
    assert {"encode", "decode"} <= set(stored.capabilities)
    assert stored.meta["parity"]["decoder:mean"] < 1e-3 and stored.meta["parity"]["encoder:gaussian"] < 1e-3
    loaded = LoadedModel(stored)
    x = load_dataset("shapes").test[:5]
    z = latent.encode(loaded, latent.check_encode(loaded, x, None), seed=0).z
    grid = latent.traversal(z[0], [0, 1], np.linspace(-2, 2, 3, dtype=np.float32))
    decoded = latent.decode(loaded, latent.check_decode(loaded, grid, True), seed=0)
    assert decoded.shape == (6, 256) and set(np.unique(decoded)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=f"arch={arch} needs image data"):
        train_model("vae", "8gaussians", arch=arch, epochs=1, name="cvae-toy")


@pytest.mark.parametrize("arch", ["mlp", "conv", "broadcast"])
def test_conditional_vae_on_digits(train_model, arch):
    """A conditional VAE (q(z|x,y), p(x|z,y)) trained on labelled digits: its sampler and scorer
    take the label (parity checked in training), it claims no latent space, the label changes a
    seeded sample, its marginal is log sum_y p(y) w_y of the per-label log weights (common
    noise: the same draws for every class), and its Bayes classifier answers p(y|x)."""

    stored = train_model(
        "vae", "digits", 3, arch=arch, hidden=32, latent=4, conditional=True, name=f"vae-cond-{arch}"
    )
    assert set(stored.capabilities) == {"sample", "bound"}
    assert stored.graph("encoder") is None and stored.graph("decoder") is None
    assert {stored.graph("sampler").condition.classes, stored.graph("scorer").condition.classes} == {10}
    test = stored.metrics["test"]
    assert "surgery" not in test and test["conditional"]["classify"]["source"] == "bound"
    check_conditional_contract(LoadedModel(stored), "bound")
