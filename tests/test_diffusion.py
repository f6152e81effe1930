"""The diffusion family: its bound is a true lower bound, its k draws are averaged (never log mean
exp), and its sampler runs any number of steps up to the bound's T, reproducibly.

The bound is checked where the model's exact likelihood is known without training: with the
exact denoiser of Gaussian data every step of the sampler is linear, so the T-step model's
marginal is a Gaussian whose variance a recursion gives; and on a small discrete space the
bound's exp summed over every point may not exceed 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from plugins.diffusion.process import Diffusion
from registry.runtime.models import CapabilityError, LoadedModel
from registry.runtime.rows import InputError
from registry.runtime.scoring import score

GAMMA_MIN, GAMMA_MAX, T = -10.0, 6.0, 1000


class GaussianEps(nn.Module):
    """E[eps | z_t] for unit Gaussian data under the variance-preserving process: sigma_t z_t."""

    def forward(self, z: torch.Tensor, features: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return (torch.rsqrt(1.0 + torch.exp(-gamma)) * z)[..., None]


class PriorLogits(nn.Module):
    """Independent dimensions with known level probabilities: the denoiser's exact prior term."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("log_p", torch.log(probs))  # (D, L)

    def forward(self, z: torch.Tensor, features: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return self.log_p.expand(len(z), *self.log_p.shape)


def _draws(model: Diffusion, x: torch.Tensor, draws: int, strata: int, seed: int) -> torch.Tensor:
    """(len(x), draws) independent estimates of the bound."""
    g = torch.Generator().manual_seed(seed)
    rows = x.repeat_interleave(draws, 0)
    u = torch.rand(len(rows), strata, generator=g, dtype=torch.float64)
    eps = torch.randn(len(rows), strata * model.dim, generator=g, dtype=torch.float64)
    eps0 = torch.randn(len(rows), model.dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        return model.bound(rows, u, eps, eps0).reshape(len(x), draws)


def gaussian_model_variance(steps: int = T) -> float:
    """The variance of the S-step sampler's output with the exact Gaussian denoiser (float64)."""

    def alpha_sigma(g: float) -> tuple[float, float]:
        return 1 / math.sqrt(1 + math.exp(g)), 1 / math.sqrt(1 + math.exp(-g))

    def gamma(t: float) -> float:
        return GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t

    c = -math.expm1(-(GAMMA_MAX - GAMMA_MIN) / steps)
    v = 1.0
    for j in range(steps):
        a_t, _ = alpha_sigma(gamma((steps - j) / steps))
        a_s, s_s = alpha_sigma(gamma((steps - j - 1) / steps))
        # x_hat = alpha_t z_t, so z_s = a_s ((1 - c) / a_t + c a_t) z_t + sqrt(c) s_s eps
        v = (a_s * ((1 - c) / a_t + c * a_t)) ** 2 * v + c * s_s**2
    a0, s0 = alpha_sigma(GAMMA_MIN)
    return v / a0**2 + (s0 / a0) ** 2


def test_bound_never_exceeds_the_exact_log_density_of_a_gaussian_diffusion():
    model = Diffusion(GaussianEps(), 2, None, GAMMA_MIN, GAMMA_MAX, T).double()
    var = gaussian_model_variance(T)
    x = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.5, 0.5], [-3.0, 3.0]], dtype=torch.float64)
    exact = (-0.5 * (x**2).sum(1) / var - math.log(2 * math.pi * var)).numpy()
    # T strata: every step once per draw, so only the Gaussian noise is Monte Carlo.
    draws = _draws(model, x, 1000, T, seed=0).numpy()
    mean, stderr = draws.mean(1), draws.std(1) / math.sqrt(draws.shape[1])
    # A true bound: below the model's own log-density, up to Monte Carlo error (0.035) ...
    assert np.all(mean <= exact + 4 * stderr), (mean, exact, stderr)
    # ... and close to it: the exact denoiser leaves only the T-step gap (0.07-0.09 nats here).
    assert np.all(exact - mean < 0.3), (mean, exact)
    # The sampler is the model the recursion describes, at any count (T's is the one the bound
    # is about); one step is first and last at once, and draws z_1 and the decoder apart.
    g = torch.Generator().manual_seed(4)
    for steps in (1, 2, 100):
        n = 10000
        noise = {k: torch.randn(steps, n, 2, dtype=torch.float64, generator=g) for k in ("eps", "z1", "dec")}
        with torch.no_grad():
            samples = model.sample(noise, steps).numpy()
        assert abs(samples.var() / gaussian_model_variance(steps) - 1) < 0.03, steps


def test_stratified_steps_estimate_the_same_bound_as_every_step():
    """The served scorer averages a few stratified steps: unbiased for the sum over all T."""
    model = Diffusion(GaussianEps(), 2, None, GAMMA_MIN, GAMMA_MAX, T).double()
    x = torch.tensor([[0.5, -1.5]], dtype=torch.float64)
    every = _draws(model, x, 400, T, seed=5).numpy()[0]
    few = _draws(model, x, 20000, 20, seed=6).numpy()[0]
    err = math.hypot(every.std() / math.sqrt(len(every)), few.std() / math.sqrt(len(few)))
    assert abs(every.mean() - few.mean()) < 4 * err, (every.mean(), few.mean(), err)
    with pytest.raises(ValueError, match="divide"):
        _draws(model, x, 1, 16, seed=0)


def test_log_mean_exp_of_the_draws_is_not_a_bound():
    """Why the scorer supports the average only: one draw is an unbiased estimate of the bound
    at random steps, not a log importance weight, and E[exp(draw)] exceeds P(x)."""
    model = Diffusion(GaussianEps(), 2, None, GAMMA_MIN, GAMMA_MAX, T).double()
    var = gaussian_model_variance(T)
    x = torch.zeros(1, 2, dtype=torch.float64)
    exact = -math.log(2 * math.pi * var)
    draws = _draws(model, x, 20000, 1, seed=1).numpy()[0]
    log_mean_exp = draws.max() + math.log(np.mean(np.exp(draws - draws.max())))
    assert draws.mean() < exact < log_mean_exp


def test_exp_bound_sums_to_at_most_one_over_a_discrete_space():
    levels, dim, steps = 5, 2, T
    probs = torch.softmax(torch.randn(dim, levels, generator=torch.Generator().manual_seed(3)), -1)
    model = Diffusion(PriorLogits(probs.double()), dim, levels, GAMMA_MIN, GAMMA_MAX, steps).double()
    grid = torch.cartesian_prod(torch.arange(levels), torch.arange(levels)).double()
    draws = _draws(model, grid, 100, steps, seed=2).numpy()
    mean = draws.mean(1)
    total = float(np.exp(mean).sum())
    # exp(bound) <= P(x) point by point, and the P(x) sum to 1 (Monte Carlo error about 1%);
    # the exact denoiser leaves the T-step gap (0.90 at T = 200, 0.98 at T = 1000).
    assert 0.93 < total <= 1.0 + 0.03, total
    # The sampler is the model bounded: with T steps its frequencies match the exact
    # denoiser's level probabilities (independent dimensions) within sampling error.
    g = torch.Generator().manual_seed(7)
    n = 20000
    noise = {k: torch.randn(steps, n, dim, dtype=torch.float64, generator=g) for k in ("eps", "z1", "dec")}
    with torch.no_grad():
        samples = model.sample(noise, steps).numpy().astype(int)
    freq = np.stack([np.bincount(samples[:, i], minlength=levels) / n for i in range(dim)])
    assert np.abs(freq - probs.numpy()).max() < 0.02, (freq, probs)


class LatticeGuess(nn.Module):
    """predict="gaussian"'s outputs for data whose levels are a discretised N(mean, 1 / precision)
    per dimension: the exact posterior over the lattice is Gaussian in the level (precision
    SNR + precision, mean m*), given as the noise prediction whose estimate is m* and the log of
    that precision relative to SNR; exact wherever the window holds the posterior's mass."""

    def __init__(self, mean: float, precision: float) -> None:
        super().__init__()
        self.mean, self.precision = mean, precision

    def forward(self, z: torch.Tensor, features: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        snr = torch.exp(-gamma)
        alpha, sigma = torch.rsqrt(1.0 + torch.exp(gamma)), torch.rsqrt(1.0 + torch.exp(-gamma))
        m = (snr * z / alpha + self.precision * self.mean) / (snr + self.precision)
        eps_hat = (z - alpha * m) / sigma
        return torch.stack([eps_hat, torch.log1p(self.precision / snr).expand_as(z)], -1)


def _lattice_prior(levels: int, mean: float, precision: float) -> torch.Tensor:
    c = torch.linspace(-1.0, 1.0, levels, dtype=torch.float64)
    return torch.softmax(-0.5 * precision * (c - mean) ** 2, 0)


@pytest.mark.parametrize("levels", [12, 40])
def test_the_gaussian_guess_on_a_lattice_keeps_a_true_bound(levels):
    """At 12 levels the 16-level window is the whole lattice and the denoiser is exact; at 40 it
    is a window, the decoder a mixture: exp(bound) must still sum to at most 1 over the space."""
    model = Diffusion(LatticeGuess(0.2, 6.0), 1, levels, GAMMA_MIN, GAMMA_MAX, T, "gaussian").double()
    assert model.window == min(16, levels)
    grid = torch.arange(levels, dtype=torch.float64)[:, None]
    total = float(np.exp(_draws(model, grid, 200, 50, seed=4).numpy().mean(1)).sum())
    assert 0.9 < total <= 1.0 + 0.02, total


def test_the_windowed_decoder_is_normalised_and_sampled_as_scored():
    """p(x | z_0) summed over all levels is 1 for any z_0 (the window's categorical plus the
    uniform share), and decode() draws from it: frequencies match within sampling error."""
    levels = 40
    # gamma_min = -4: sigma_0 spans several levels, so the window (16) leaves mass to the mixture
    model = Diffusion(LatticeGuess(0.0, 1.0), 1, levels, -4.0, GAMMA_MAX, T, "gaussian").double()
    x = torch.arange(levels, dtype=torch.float64)[:, None]
    xs = model.scale(x)
    g0 = torch.full((levels, 1), -4.0, dtype=torch.float64)
    alpha, sigma = model.alpha_sigma(g0)
    for z0 in (-0.97, 0.0, 0.31, 1.2):
        eps0 = (z0 - alpha * xs) / sigma  # the same z_0 for every x
        p = torch.exp(model.reconstruction(xs, eps0))
        assert abs(float(p.sum()) - 1.0) < 1e-9
        n = 200000
        e = torch.randn(n, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        z = torch.full((n, 1), z0, dtype=torch.float64)
        drawn = model.decode(z, torch.full((n, 1), -4.0, dtype=torch.float64), e).numpy().astype(int)
        freq = np.bincount(drawn[:, 0], minlength=levels) / n
        assert np.abs(freq - p.numpy()).sum() / 2 < 0.01


def test_the_gaussian_guess_samples_its_model():
    """With the exact denoiser (12 levels: the window is the lattice) the T-step sampler's
    frequencies are the prior's within sampling error."""
    levels, steps, n = 12, 200, 20000
    model = Diffusion(LatticeGuess(-0.3, 8.0), 1, levels, GAMMA_MIN, GAMMA_MAX, T, "gaussian").double()
    g = torch.Generator().manual_seed(8)
    noise = {k: torch.randn(steps, n, 1, dtype=torch.float64, generator=g) for k in ("eps", "z1", "dec")}
    with torch.no_grad():
        samples = model.sample(noise, steps).numpy().astype(int)
    freq = np.bincount(samples[:, 0], minlength=levels) / n
    assert np.abs(freq - _lattice_prior(levels, -0.3, 8.0).numpy()).max() < 0.02


@pytest.fixture(scope="module")
def small_digits(trained):
    """The session's tiny diffusion on digits (seconds of training): semantics, not quality."""
    return trained["diffusion-digits"]


def test_stored_model_states_its_estimates_and_step_range(small_digits):
    scorer = small_digits.graph("scorer", "bound")
    sampler = small_digits.graph("sampler")
    assert scorer.estimates == ["average"]
    assert sampler.loop.count_input == "steps"
    assert (sampler.loop.steps, sampler.loop.max_steps) == (100, 1000)
    parity = small_digits.meta["parity"]
    assert parity["scorer:bound"] < 1e-3
    assert parity["sampler_mismatch_share"] <= 0.01
    assert "iwae64_bits_per_dim" not in small_digits.metrics["test"]


def test_draws_are_averaged_and_log_mean_exp_is_refused(small_digits):
    loaded = LoadedModel(small_digits)
    x = small_digits_rows(loaded)
    result = score(loaded, x, "bound", k=4, seed=5)
    assert result.estimate == "average"
    assert result.elbo is None
    np.testing.assert_allclose(result.scores, loaded.log_weights(x, 5, 4).mean(1), rtol=1e-9)
    assert "elbo" not in result.as_dict() and result.as_dict()["estimate"] == "average"
    with pytest.raises(CapabilityError) as err:
        score(loaded, x, "bound", k=4, estimate="importance_weighted")
    assert err.value.field == "estimate" and "not a bound" in str(err.value)


def small_digits_rows(loaded: LoadedModel) -> np.ndarray:
    from registry.datasets import load_dataset

    return load_dataset("digits").test[:8]


def test_sampling_takes_a_step_count_reproducibly(small_digits):
    loaded = LoadedModel(small_digits)
    a = loaded.sample(6, seed=1, steps=10)
    assert a.shape == (6, 64)
    assert np.array_equal(a, loaded.sample(6, seed=1, steps=10))
    assert not np.array_equal(a, loaded.sample(6, seed=1, steps=20))
    assert np.array_equal(loaded.sample(3, seed=2), loaded.sample(3, seed=2, steps=100))
    assert set(np.unique(a)) <= set(range(17))
    assert loaded.steps(10) == 10 and loaded.steps() == 100
    for bad in (0, 1001):
        with pytest.raises(InputError) as err:
            loaded.sample(2, seed=0, steps=bad)
        assert err.value.field == "steps"


# --- over HTTP (the real server of the session) -------------------------------------------------


def test_served_samples_take_steps_and_a_seed_reproduces_them(server):
    client, _ = server
    body = {"model": "diffusion-digits", "n": 4, "seed": 3, "steps": 12}
    first = client.post("/sample", json=body)
    assert first.status_code == 200, first.text
    assert client.post("/sample", json=body).json()["samples"] == first.json()["samples"]
    other = client.post("/sample", json={**body, "steps": 13}).json()["samples"]
    assert other != first.json()["samples"]
    loaded = LoadedModel(_stored(client))
    np.testing.assert_array_equal(np.asarray(first.json()["samples"]), loaded.sample(4, seed=3, steps=12))
    for steps in (0, 1001, "ten"):
        bad = client.post("/sample", json={**body, "steps": steps})
        assert 400 <= bad.status_code < 500, bad.text
        assert "steps" in bad.json()["error"], bad.text
    # A fixed loop (autoregressive: one dimension per step) runs its own count only.
    fixed = client.post("/sample", json={"model": "autoregressive-digits", "n": 1, "steps": 10})
    assert fixed.status_code == 400 and "steps" in fixed.json()["error"], fixed.text


def test_served_bound_averages_draws_and_refuses_log_mean_exp(server):
    client, _ = server
    x = small_digits_rows(None).tolist()
    answer = client.post(
        "/score", json={"model": "diffusion-digits", "x": x, "kind": "bound", "k": 4, "seed": 2}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["estimate"] == "average" and body.get("elbo") is None
    loaded = LoadedModel(_stored(client))
    np.testing.assert_allclose(body["scores"], loaded.log_weights(np.asarray(x), 2, 4).mean(1), rtol=1e-6)
    refused = client.post(
        "/score", json={"model": "diffusion-digits", "x": x, "k": 4, "estimate": "importance_weighted"}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "estimate" and "not a bound" in refused.json()["error"]
    # Where the draws are log importance weights (the VAE), the same request is served.
    vae = client.post(
        "/score", json={"model": "vae-digits", "x": x, "k": 4, "estimate": "importance_weighted"}
    )
    assert vae.status_code == 200 and vae.json()["estimate"] == "importance_weighted", vae.text


def _stored(client):
    from registry.runtime.store import get_model

    tag = next(m["tag"] for m in client.get("/models").json()["models"] if m["name"] == "diffusion-digits")
    return get_model(tag)


# --- p(x|y) with classifier-free guidance (issue 27) -------------------------------------------


@pytest.fixture(scope="module")
def conditional_digits(bentoml_home):
    """A tiny conditional diffusion on digits (seconds of training; parity checked on storing):
    semantics, not quality (benchmarks/guidance.py measures what guidance does)."""
    from plugins.diffusion.family import DiffusionFamily
    from registry.contract.family import TrainControl
    from registry.datasets import load_dataset
    from registry.pipeline.train import train_and_store

    data = load_dataset("digits", conditional=True)
    family = DiffusionFamily()
    # Four strata in the scorer: the conditional evaluation runs every class twice (the marginal).
    config = family.Config(channels=16, blocks=1, score_strata=4)
    control = TrainControl(seed=0, epochs=1, progress=False)
    return train_and_store(family, data, config, control, name="diffusion-digits-cond"), data


def test_label_dropout_replaces_a_share_of_labels_with_the_null_class():
    from plugins.diffusion.train import drop_labels

    y = torch.arange(20000).remainder(10)[:, None]
    dropped = drop_labels(y, 10, 0.15, torch.Generator().manual_seed(0))
    null = dropped == 10
    assert abs(float(null.float().mean()) - 0.15) < 0.01
    assert torch.equal(dropped[~null], y[~null])  # the others keep their own label
    assert torch.equal(dropped, drop_labels(y, 10, 0.15, torch.Generator().manual_seed(0)))


def test_conditional_diffusion_graphs_take_labels_and_a_guidance_scale(conditional_digits):
    stored, _ = conditional_digits
    assert stored.meta["config"]["p_uncond"] == 0.15
    scorer, sampler = stored.graph("scorer", "bound"), stored.graph("sampler")
    assert (scorer.condition.classes, scorer.condition.null, scorer.condition.guidance) == (10, True, None)
    assert (sampler.condition.classes, sampler.condition.null, sampler.condition.guidance) == (
        10,
        True,
        "guidance",
    )
    assert scorer.estimates == ["average"]  # per label as unconditionally: no log mean exp
    parity = stored.meta["parity"]  # labels 0..10 (the null class too), guidance 2
    assert parity["scorer:bound"] < 1e-3 and parity["sampler_mismatch_share"] <= 0.01


def test_conditional_diffusion_samples_follow_labels_and_guidance(conditional_digits):
    stored, _ = conditional_digits
    loaded = LoadedModel(stored)
    threes, sevens = np.full(6, 3), np.full(6, 7)
    a = loaded.sample(6, seed=1, steps=20, labels=threes, guidance=3.0)
    assert a.shape == (6, 64) and set(np.unique(a)) <= set(range(17))
    assert np.array_equal(a, loaded.sample(6, seed=1, steps=20, labels=threes, guidance=3.0))
    assert not np.array_equal(a, loaded.sample(6, seed=1, steps=20, labels=sevens, guidance=3.0))
    # w = 0 is the unconditional model: the label drops out of the step exactly.
    np.testing.assert_array_equal(
        loaded.sample(6, seed=1, steps=20, labels=threes, guidance=0.0),
        loaded.sample(6, seed=1, steps=20, labels=sevens, guidance=0.0),
    )
    # No scale asked: the conditional model (w = 1).
    np.testing.assert_array_equal(
        loaded.sample(6, seed=1, steps=20, labels=threes),
        loaded.sample(6, seed=1, steps=20, labels=threes, guidance=1.0),
    )
    for bad in (-1.0, 21.0):
        with pytest.raises(InputError) as err:
            loaded.sample(2, seed=0, labels=[1, 2], guidance=bad)
        assert err.value.field == "guidance"


def test_conditional_diffusion_scores_bound_the_marginal_and_classify(conditional_digits):
    stored, data = conditional_digits
    loaded = LoadedModel(stored)
    x, y = data.test[:12], data.labels["test"][:12]
    given = score(loaded, x, "bound", seed=3, labels=y)
    assert given.given == "labels" and given.estimate == "average"
    assert np.all(np.isfinite(given.scores)) and np.all(given.scores < 0)
    # The null class K scores the unconditional model: a bound of its own, not a label's.
    null = loaded.point_scores(x, "bound", seed=3, labels=np.full(len(x), 10))
    assert np.all(np.isfinite(null)) and not np.allclose(null, given.scores)
    # Each label's bound with the marginal's seed (its common noise), then the marginal: from
    # average-only bounds it is sum_y q(y) [B_y + log p(y) - log q(y)] (a bound for any q), so
    # it lies between the smallest joint term and log sum_y exp(B_y + log p(y)), row by row.
    per_label = np.stack(
        [score(loaded, x, "bound", seed=3, labels=np.full(len(x), c)).scores for c in range(10)], 1
    )
    joint = per_label + loaded.class_log_prior()[None, :]
    np.testing.assert_allclose(per_label[np.arange(len(x)), y], given.scores, rtol=1e-12)
    marginal = score(loaded, x, "bound", seed=3)
    assert marginal.given == "marginal"
    top = joint.max(1)
    log_sum_exp = top + np.log(np.exp(joint - top[:, None]).sum(1))
    assert np.all(marginal.scores <= log_sum_exp + 1e-9)
    assert np.all(marginal.scores >= joint.min(1) - 1e-9)
    classify = score(loaded, x, "classify", seed=3)
    assert classify.probabilities.shape == (12, 10) and classify.source == "bound"
    np.testing.assert_allclose(classify.probabilities.sum(1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(classify.labels, classify.probabilities.argmax(1))
    evaluated = stored.metrics["test"]["conditional"]
    assert evaluated["classes"] == 10 and evaluated["classify"]["source"] == "bound"
