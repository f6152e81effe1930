"""The VAE on colour images: the convolutional network and the discretised-logistic decoder.

Exactness is checked where the space can be enumerated (every 2x2x3 image at 2 levels, every
1x2x3 image at 4: 4,096 each) with a one-dimensional latent, whose marginal log p(x) is a
quadrature; the whole path (defaults, train, export with parity, store, serve, ELBO surgery) on
8x8x3 images at 4 levels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from plugins.common.logistic import log_mass
from plugins.vae.config import VAEConfig
from plugins.vae.likelihood import Logistic
from plugins.vae.model import VAE
from plugins.vae.train import likelihood_of
from registry.datasets import load_dataset
from registry.pipeline import surgery
from registry.runtime import latent
from registry.runtime.models import LoadedModel


def _stack(tmp_path, shape=(8, 8, 3), levels=4, n=240, seed=0, name="rgb.npy") -> str:
    """Images of one colour each (a random level per channel, the same at every pixel): three
    numbers a latent can hold, so a VAE learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, levels, (n, *([1] * (len(shape) - 1)), shape[-1]))
    np.save(tmp_path / name, np.broadcast_to(colours, (n, *shape)).astype(np.float32))
    return str(tmp_path / name)


def test_defaults_follow_the_data_kind(tmp_path):
    """Colour images get the conv network and the local decoder; digits, shapes and toys keep
    every option they had (an MLP, latent 8, a categorical or Gaussian decoder); a grey image at
    256 levels gets the logistic over an MLP. A decoder or arch the data cannot take is refused."""
    colour = VAEConfig().resolve(load_dataset(_stack(tmp_path)))
    assert (colour.arch, colour.decoder, colour.components) == ("conv", "local", 1)
    old = {"latent": 8, "hidden": 256, "depth": 2, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64}
    old |= {"epochs": 300, "patience": 30, "arch": "mlp"}
    for name, decoder in [("digits", "categorical"), ("shapes", "categorical"), ("moons", "gaussian")]:
        resolved = VAEConfig().resolve(load_dataset(name))
        assert resolved.decoder == decoder
        assert {k: getattr(resolved, k) for k in old} == old
    grey = load_dataset(_stack(tmp_path, shape=(8, 8, 1), levels=256, name="grey.npy"))
    assert (VAEConfig().resolve(grey).arch, VAEConfig().resolve(grey).decoder) == ("mlp", "logistic")
    assert VAEConfig(decoder="categorical").resolve(load_dataset(_stack(tmp_path))).decoder == "categorical"
    with pytest.raises(ValueError, match="decoder=gaussian is for continuous data; 'digits' is discrete"):
        VAEConfig(decoder="gaussian").resolve(load_dataset("digits"))
    with pytest.raises(ValueError, match="decoder=logistic is for discrete data"):
        VAEConfig(decoder="logistic").resolve(load_dataset("moons"))
    with pytest.raises(ValueError, match="decoder=local needs image data; 'moons' has no image shape"):
        VAEConfig(decoder="local").resolve(load_dataset("moons"))
    with pytest.raises(ValueError, match="arch=conv needs image data"):
        VAEConfig(arch="conv").resolve(load_dataset("moons"))
    with pytest.raises(ValueError, match="arch=broadcast needs image data"):
        VAEConfig(arch="broadcast").resolve(load_dataset("moons"))


@pytest.mark.parametrize("components", [1, 3])
def test_the_logistic_sums_to_one_over_the_levels_and_is_read_at_the_observed_one(components):
    """At 256 levels, for locations inside, at and far beyond the ends and scales from a twentieth
    of a level to thousands: the masses of the levels sum to 1, and the log-likelihood of a row
    is the sum of its values' masses at their observed levels."""
    levels, k = 256, components
    torch.manual_seed(0)
    raw = torch.randn(2, 64, Logistic(levels, k).per, dtype=torch.float64) * 3
    raw[0, :8, :k] = torch.tensor([-9.0, -2.1, -2.0, 0.0, 2.0, 2.1, 9.0, 0.3])[:, None]  # loc: far out, edges
    raw[0, 8:16, k : 2 * k] = torch.linspace(-12, 6, 8, dtype=torch.float64)[:, None]  # log-scales, clamped
    centre, scale = (
        torch.full((64,), 127.5, dtype=torch.float64),
        torch.full((64,), 64.0, dtype=torch.float64),
    )
    lik = Logistic(levels, k)
    params = lik.split(raw, centre, scale)
    log_w, loc, log_scale = params
    grid = torch.arange(levels, dtype=torch.float64)[:, None]
    table = torch.logsumexp(
        log_w[..., None, :] + log_mass(grid, loc[..., None, :], log_scale[..., None, :], levels), -1
    )
    assert torch.allclose(torch.logsumexp(table, -1), torch.zeros(2, 64, dtype=torch.float64), atol=1e-9)
    assert table.max() > -1e-3 and table.min() < -50  # near-certain and near-impossible levels both occur
    x = torch.randint(0, levels, (2, 64)).double()
    picked = torch.gather(table, -1, x.long()[..., None])[..., 0].sum(-1)
    assert torch.allclose(lik.log_likelihood(x, params), picked, atol=1e-9)


@pytest.mark.parametrize("components", [1, 3])
def test_a_seeded_draw_follows_the_masses(components):
    """One uniform per value picks the component and inverts its CDF: over 40,000 draws each
    level's frequency matches its mass (5 standard errors), at 5 levels with mass at both ends."""
    levels, n = 5, 40_000
    lik = Logistic(levels, components)
    torch.manual_seed(1)
    raw = (torch.randn(1, 3, lik.per) * 1.5).expand(n, 3, lik.per)
    params = lik.split(raw, torch.full((3,), 2.0), torch.full((3,), 1.25))
    drawn = lik.sample(params, torch.rand(n, 3, generator=torch.Generator().manual_seed(2)))
    for value in range(3):
        mass = torch.tensor(
            [
                lik.log_likelihood(
                    torch.full((1, 1), float(v)), tuple(p[:1, value : value + 1] for p in params)
                )
                .exp()
                .item()
                for v in range(levels)
            ]
        )
        freq = torch.stack([(drawn[:, value] == v).double().mean() for v in range(levels)])
        assert mass.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.all((freq - mass).abs() <= 5 * torch.sqrt(mass * (1 - mass) / n) + 1e-4), (freq, mass)
    assert set(drawn.unique().tolist()) <= set(range(levels))


@pytest.mark.parametrize(("shape", "components"), [((2, 2, 1), 1), ((1, 2, 2), 3)])
def test_the_local_decoder_draws_images_from_its_conditionals(shape, components):
    """Uniform noise, one a value, draws whole images from the product of the conditionals: over
    40,000 draws at 3 levels each of the 81 images comes up as often as its probability (5
    standard errors), which sums to 1; the values are coupled (the joint is not the product of
    the marginals). The decoder mean is the first value's weighted location, and the next
    value's is its own moved by the coefficient times the first's mean (centred)."""
    from plugins.vae.local import LocalLogistic

    levels, n = 3, 40_000
    lik = LocalLogistic(levels, shape, components)
    torch.manual_seed(6)
    raw = (torch.randn(1, 4, lik.per) * 1.5).expand(n, 4, lik.per)
    params = lik.split(raw, torch.full((4,), 1.0), torch.full((4,), 0.75))
    drawn = lik.sample(params, torch.rand(n, 4, generator=torch.Generator().manual_seed(7)))
    images = _every_image(4, levels)
    mass = lik.log_likelihood(images, tuple(p[:1].expand(len(images), *p.shape[1:]) for p in params)).exp()
    assert mass.sum().item() == pytest.approx(1.0, abs=1e-5)
    code = (drawn * torch.tensor([27.0, 9.0, 3.0, 1.0])).sum(-1).long()
    freq = torch.bincount(code, minlength=81).double() / n
    assert torch.all((freq - mass).abs() <= 5 * torch.sqrt(mass * (1 - mass) / n) + 1e-4), (freq, mass)
    table = mass.reshape(levels, levels, levels, levels)
    first, second = table.sum((1, 2, 3)), table.sum((0, 2, 3))
    assert (table.sum((2, 3)) - first[:, None] * second[None, :]).abs().max() > 1e-3
    mean = lik.mean(tuple(p[:1] for p in params))[0]
    log_w, loc, _, coef = (p[0] for p in params)
    m0 = torch.clamp((log_w[0].exp() * loc[0]).sum(), 0, levels - 1)
    # the second value is the first's right neighbour (2x2x1: coefficient 0, the left one) or its
    # second channel (1x2x2: coefficient 0, the first channel's)
    m1 = torch.clamp((log_w[1].exp() * loc[1]).sum() + coef[1, 0] * (m0 - 1.0), 0, levels - 1)
    assert mean[:2].tolist() == pytest.approx([m0.item(), m1.item()], abs=1e-5)


def _every_image(dim: int, levels: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=dim)), dtype=torch.float32)


def _random_vae(shape, levels, decoder, components=1, classes=0, seed=0, broadcast=False) -> VAE:
    torch.manual_seed(seed)
    config = VAEConfig(arch="conv", decoder=decoder, components=components, latent=1, channels=8, blocks=1)
    vae = VAE(
        math.prod(shape),
        likelihood_of(config, levels, shape),
        1,
        16,
        1,
        shape,
        classes=classes,
        channels=8,
        blocks=1,
        broadcast=broadcast,
    )
    vae.mean.fill_((levels - 1) / 2)
    vae.std.fill_(levels / 4)
    with torch.no_grad():  # away from the initialisation, whose decoder ignores z
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return vae.eval()


def _log_w(vae: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    rec, prior, post = vae.log_weight(x, eps)
    return rec + prior - post


def _given(params: tuple[torch.Tensor, ...], i: int, n: int) -> tuple[torch.Tensor, ...]:
    """The i-th z's decoder parameters, repeated for n images."""
    return tuple(p[i : i + 1].expand(n, *p.shape[1:]) for p in params)


@pytest.mark.parametrize(
    ("shape", "levels", "decoder", "components", "broadcast"),
    [
        ((2, 2, 3), 2, "logistic", 1, False),
        ((1, 2, 3), 4, "logistic", 3, False),
        ((1, 2, 3), 4, "categorical", 1, False),
        ((2, 2, 3), 2, "local", 1, False),
        ((1, 2, 3), 4, "local", 3, False),
        ((3, 2, 1), 4, "local", 2, False),
        ((1, 2, 3), 4, "categorical", 1, True),
        ((3, 2, 1), 4, "local", 2, True),
    ],
)
def test_bounds_on_every_image_of_a_tiny_space(shape, levels, decoder, components, broadcast):
    """With a 1-D latent, log p(x) = log of the integral of p(x|z) p(z) dz is a quadrature: it sums
    to 1 over the 4,096 images (so p(x|z) is normalised for every z), every image's ELBO (64
    draws) is below it, the ELBOs' exponentials sum to at most 1, and IWAE(64) is closer. The
    spatial-broadcast decoder (arch=broadcast) is held to the same."""
    vae = _random_vae(shape, levels, decoder, components, broadcast=broadcast)
    images = _every_image(math.prod(shape), levels)
    z = torch.linspace(-7, 7, 281)[:, None]
    with torch.no_grad():
        params = vae.params(z)
        n = len(images)
        log_lik = torch.stack([vae.log_likelihood(images, _given(params, i, n)) for i in range(len(z))], 1)
        log_lik = log_lik.double()  # (images, z)
        draws = torch.randn(64, 1, generator=torch.Generator().manual_seed(3))
        lw = torch.stack([_log_w(vae, images, e.expand(len(images), 1)) for e in draws], 1).double()
    per_z = torch.logsumexp(log_lik, 0)
    assert torch.allclose(per_z, torch.zeros_like(per_z), atol=1e-4), "p(x|z) sums to 1 over the images"
    log_prior = -0.5 * (math.log(2 * math.pi) + z[:, 0].double() ** 2)
    dz = float(z[1, 0] - z[0, 0])
    exact = torch.logsumexp(log_lik + log_prior, 1) + math.log(dz)
    assert torch.logsumexp(exact, 0).exp().item() == pytest.approx(1.0, abs=1e-4)
    assert exact.max() - exact.min() > 2  # far from uniform
    elbo = lw.mean(1)
    se = lw.std(1) / math.sqrt(lw.shape[1])
    assert torch.all(elbo <= exact + 4 * se + 1e-5)
    assert torch.logsumexp(elbo, 0).exp().item() <= 1.0
    iwae = torch.logsumexp(lw, 1) - math.log(lw.shape[1])
    assert (exact - iwae).mean() < (exact - elbo).mean()


@pytest.mark.parametrize("decoder", ["logistic", "local"])
def test_a_conditional_conv_vae_is_normalised_for_each_label(decoder):
    """p(x|z, y) sums to 1 over the images for each label and z; the label changes it."""
    vae = _random_vae((1, 2, 3), 4, decoder, components=2, classes=3)
    images = _every_image(6, 4)
    with torch.no_grad():
        totals, rows = [], []
        for y in range(3):
            labels = torch.full((len(images), 1), y, dtype=torch.int64)
            params = vae.params(torch.full((len(images), 1), 0.7), labels)
            log_p = vae.log_likelihood(images, params)
            totals.append(torch.logsumexp(log_p.double(), 0).item())
            rows.append(log_p)
    assert totals == pytest.approx([0.0] * 3, abs=1e-4)
    assert (rows[0] - rows[1]).abs().max() > 0.1


@pytest.mark.slow
def test_colour_vae_trains_exports_and_serves(train_model, tmp_path):
    """8x8x3 at 4 levels: the default conv + local-decoder VAE passes parity on every graph it
    serves; it serves no decoder-params graph (surgery reads the scorer); its mean decoder
    answers values in the levels' range, one colour an image as the data; its seeded samples
    repeat; ELBO surgery adds up; the bound beats the uniform."""
    data = _stack(tmp_path)
    stored = train_model("vae", data, 15, channels=8, latent=4, lr=3e-3, name="vae-rgb")
    config = stored.meta["config"]
    assert (config["arch"], config["decoder"], config["blocks"]) == ("conv", "local", 1)
    assert {"encode", "decode"} <= set(stored.capabilities)
    assert stored.graph("decoder", "params") is None
    assert max(v for k, v in stored.meta["parity"].items() if "share" not in k) < 1e-3, stored.meta["parity"]
    loaded = LoadedModel(stored)
    x = load_dataset(data).test[:5]
    z = latent.encode(loaded, latent.check_encode(loaded, x, None), seed=0).z
    decoded = latent.decode(loaded, latent.check_decode(loaded, z, False), seed=0)
    assert decoded.shape == (5, 192) and decoded.min() >= 0.0 and decoded.max() <= 3.0
    # the decoded image's every pixel the same colour, as the data's are (per channel, in levels)
    assert np.abs(decoded.reshape(5, 64, 3) - decoded.reshape(5, 64, 3).mean(1, keepdims=True)).max() < 0.5
    drawn = loaded.sample(6, seed=4)
    assert np.array_equal(drawn, loaded.sample(6, seed=4)) and not np.array_equal(
        drawn, loaded.sample(6, seed=5)
    )
    test = stored.metrics["test"]
    s = test["surgery"]
    assert abs(s["sum_minus_elbo_beta"]) <= 4 * s["monte_carlo_stderr"] + 1e-6
    assert test["bits_per_dim"] < math.log2(4)
    assert test["iwae64_bits_per_dim"] <= test["bits_per_dim"] + 0.01


@pytest.mark.slow
def test_surgery_reads_the_scorer_as_it_reads_the_decoder_params(train_model, tmp_path):
    """A categorical decoder serves its per-level table; ELBO surgery's log p(x|z) from it and
    from the scorer's log weight at the same draws (what it uses for a logistic decoder) agree."""
    data = _stack(tmp_path, levels=3, name="rgb3.npy")
    stored = train_model("vae", data, 2, decoder="categorical", channels=8, latent=4, name="vae-rgb-cat")
    loaded = LoadedModel(stored)
    x = load_dataset(data).test[:20].astype(np.float64)
    mean, log_var = surgery.encode(loaded, x)
    eps = np.random.default_rng(0).standard_normal(mean.shape)
    z = mean + np.exp(0.5 * log_var) * eps
    from_params = surgery._log_lik(loaded, x, z, eps, log_var)
    original = surgery._decoder_params
    try:
        surgery._decoder_params = lambda loaded: None
        from_scorer = surgery._log_lik(loaded, x, z, eps, log_var)
    finally:
        surgery._decoder_params = original
    assert np.abs(from_params - from_scorer).max() < 1e-3
    assert from_params.std() > 0.1  # rows differ: the comparison is not of constants
