"""The flow family: normalisation, dequantisation bound, quality against baselines, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conditional_contract import check_conditional_contract

from plugins.flow.model import Flow
from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import Dataset, load_dataset
from registry.datasets.toys import TOYS
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import score


def _grid(lim: float, n: int) -> tuple[np.ndarray, float]:
    g = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32), float((g[1] - g[0]) ** 2)


@pytest.mark.parametrize("transform", ["affine", "spline"])
def test_flow_is_invertible_and_logdet_matches_autograd(transform):
    torch.manual_seed(0)
    flow = Flow(
        4,
        None,
        n_blocks=3,
        hidden=16,
        depth=1,
        dropout=0.0,
        clamp=2.0,
        alpha=0.01,
        seed=0,
        transform=transform,
    )
    x = torch.randn(64, 4)
    flow.train()
    flow.log_prob(x)  # actnorm's data-dependent initialisation
    for p in flow.parameters():  # move away from the identity the zero-init starts at
        p.data += 0.05 * torch.randn_like(p)
    flow.eval()
    flow.freeze_inverse()
    with torch.no_grad():
        z = torch.randn(8, 4)
        back = flow.sample(z)
        # Forward of the sample gives back z: recover z through the steps.
        h, _ = flow.pre(back)
        for step in flow.steps:
            h, _ = step(h)
        assert torch.allclose(h, z, atol=1e-4)

    # Change of variables: log p(x) = log N(f(x)) + log|det J_f(x)|, with J from autograd.
    def f(v):
        h, _ = flow.pre(v[None])
        for step in flow.steps:
            h, _ = step(h)
        return h[0]

    v = torch.randn(4)
    jac = torch.autograd.functional.jacobian(f, v)
    z = f(v)
    expected = -0.5 * (z @ z) - 2 * math.log(2 * math.pi) + torch.linalg.slogdet(jac)[1]
    assert flow.log_prob(v[None])[0].item() == pytest.approx(expected.item(), abs=1e-4)


def test_dequantisation_bound_below_discrete_mass():
    """On 2-D data with 4 levels: E_u log p(x+u) <= log P(x) per cell, and masses sum to <= 1.

    The logit pre-processing maps the whole real line back to a slightly wider interval than
    [0, L), so a little density falls outside the data's cells: the masses of the 16 cells
    sum to at most 1 (which keeps every bound a true lower bound), and close to it.
    """
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(16))
    cells = rng.choice(16, size=4000, p=probs)
    x = np.stack([cells // 4, cells % 4], 1).astype(np.float32)
    data = Dataset("grid4", x[:3000], x[3000:3500], x[3500:], levels=4)
    fam = get_plugins().get("flow")
    cfg = fam.Config(n_blocks=4, hidden=32, epochs=15, batch_size=256, dropout=0.0, weight_decay=0.0)
    model = fam.train(data, cfg, TrainControl(seed=0, progress=False))
    # P(x) = integral of p over the unit cell [x, x+1)^2 (midpoint rule, 60x60 points per cell).
    m = 60
    offsets = (np.arange(m) + 0.5) / m
    ou, ov = np.meshgrid(offsets, offsets)
    inner = np.stack([ou.ravel(), ov.ravel()], 1)
    total = 0.0
    for a in range(4):
        for b in range(4):
            pts = (np.array([a, b]) + inner).astype(np.float32)
            dens = np.exp(fam.bound(model, np.zeros_like(pts), {"u": pts}))
            mass = dens.mean()
            total += mass
            bound = fam.bound(
                model, np.tile([a, b], (len(pts), 1)).astype(np.float32), {"u": inner.astype(np.float32)}
            ).mean()
            assert bound <= math.log(mass) + 1e-6
    assert 0.95 < total <= 1.0 + 1e-3


@pytest.mark.slow
def test_flow_log_prob_integrates_to_one(trained):
    loaded = LoadedModel(trained["flow-8gaussians"])
    pts, cell = _grid(7.0, 500)
    logp = score(loaded, pts, "log_prob").scores
    assert np.all(np.isfinite(logp))
    assert np.exp(logp).sum() * cell == pytest.approx(1.0, abs=0.02)


@pytest.mark.slow
def test_flow_kl_on_8gaussians_below_threshold(trained):
    """KL(pi || p) = E_pi[log pi - log p], measured here on fresh draws from the toy's known
    density through the served scorer, and compared with the figure evaluation stored."""
    loaded = LoadedModel(trained["flow-8gaussians"])
    toy = TOYS["8gaussians"]
    x = toy.sample(20_000, np.random.default_rng(11))
    gap = toy.log_density(x) - score(loaded, x.astype(np.float32), "log_prob").scores
    kl, se = gap.mean(), gap.std() / math.sqrt(len(gap))
    assert kl < 0.1, (kl, se)
    assert kl > -4 * se  # a KL is never negative: a density above the truth shows here
    # Two independent estimates of one KL: 4 standard errors of their difference (~6e-5).
    test = trained["flow-8gaussians"].metrics["test"]
    assert test["n"] == 20_000
    assert abs(test["kl"] - kl) < 4 * math.hypot(se, test["kl_stderr"]), (test["kl"], kl)


@pytest.mark.slow
def test_flow_beats_baselines_on_digits(trained):
    flow = trained["flow-digits"].metrics["test"]["bits_per_dim"]
    gauss = trained["gaussian-digits"].metrics["test"]["bits_per_dim"]
    cat = trained["categorical-digits"].metrics["test"]["bits_per_dim"]
    assert trained["categorical-digits"].metrics["test"]["kind"] == "log_prob"
    assert trained["flow-digits"].metrics["test"]["kind"] == "bound"
    assert flow < math.log2(17)
    assert flow < gauss, (flow, gauss)
    assert flow < cat, (flow, cat)


def _rebuild_flow(stored):
    """The trained PyTorch flow, rebuilt from the stored config and weights.npz."""
    from plugins.flow.config import FlowConfig, FlowModel
    from plugins.flow.model import InvertibleLinear

    cfg = FlowConfig(**stored.meta["config"])
    dim, levels = stored.data["dim"], stored.data.get("levels")
    flow = Flow(
        dim,
        levels,
        n_blocks=cfg.n_blocks,
        hidden=cfg.hidden,
        depth=cfg.depth,
        dropout=cfg.dropout,
        clamp=cfg.clamp,
        alpha=cfg.alpha,
        seed=stored.meta["train"]["seed"],
        transform=cfg.coupling,
        bins=cfg.bins,
        tail_bound=cfg.tail_bound,
    )
    with np.load(stored.file("weights.npz")) as weights:
        flow.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    flow.eval()
    for step in flow.steps:
        if isinstance(step, InvertibleLinear):
            step.frozen = True  # its frozen matrices came with the weights
    return FlowModel(cfg, flow, dim, levels, fit={})


@pytest.mark.slow
def test_flow_parity_recorded_and_within_tolerance(trained):
    """The stored parity figure is the scorer's real error: measured again here, from the
    weights, on the same 1,000 rows and noise, it matches, and each row is within its own
    allowance (1e-4 + 1e-5 * |score|)."""
    from registry.pipeline.export import parity_rows
    from registry.runtime.graphs import draw_noise

    family = get_plugins().get("flow")
    for name in ("flow-digits", "flow-8gaussians"):
        stored = trained[name]
        model = _rebuild_flow(stored)
        spec = stored.graph("scorer")
        rows = parity_rows(load_dataset(stored.data["name"]).test)
        noise = draw_noise(spec.noise, len(rows), np.random.default_rng(1234))
        got = LoadedModel(stored, providers=["CPUExecutionProvider"]).run(spec, {"x": rows, **noise})
        method = family.log_prob if spec.kind == "log_prob" else family.bound
        expected = method(model, rows, noise)
        err = np.abs(got - expected)
        recorded = stored.meta["parity"][f"scorer:{spec.kind}"]
        assert recorded == pytest.approx(err.max(), rel=0.01, abs=1e-7), (name, recorded, err.max())
        assert np.all(err <= 1e-4 + 1e-5 * np.abs(expected)), name
        assert err.max() > 0  # the graphs really were compared (float32 never agrees exactly)


@pytest.mark.slow
def test_flow_samples_are_digits_and_reproducible(trained):
    loaded = LoadedModel(trained["flow-digits"])
    a = loaded.sample(64, seed=7)
    b = loaded.sample(64, seed=7)
    c = loaded.sample(64, seed=8)
    assert a.shape == (64, 64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) <= set(range(17))
    # Dark borders and ink in the middle, like the data.
    data = load_dataset("digits")
    assert abs(a.mean() - data.test.mean()) < 1.5
    border = a.reshape(-1, 8, 8)[:, :, 0].mean()
    assert border < 1.0
    # Recognisable digits: strokes, i.e. neighbouring pixels that move together. The checks
    # above pass for independent pixels with the data's means (the diagonal Gaussian; or the
    # flow's own samples with each pixel shuffled across rows); this one does not. Measured: data
    # 0.30, flow 0.22, independent pixels 0.00 +- 0.01.
    real = np.concatenate([data.validation, data.test])
    samples = loaded.sample(len(real), seed=9)
    gauss = LoadedModel(trained["gaussian-digits"]).sample(len(real), seed=9)
    assert abs(_adjacent_correlation(gauss)) < 0.05  # the statistic sees no strokes there
    assert _adjacent_correlation(samples) > 0.5 * _adjacent_correlation(real)


def _adjacent_correlation(x: np.ndarray) -> float:
    """Mean correlation of horizontally adjacent pixels over the 8 x 7 pairs of an 8x8 image."""
    im = x.reshape(-1, 8, 8).astype(np.float64)
    a, b = im[:, :, :-1].reshape(len(x), -1), im[:, :, 1:].reshape(len(x), -1)
    a, b = a - a.mean(0), b - b.mean(0)
    return float(((a * b).mean(0) / np.sqrt((a * a).mean(0) * (b * b).mean(0) + 1e-12)).mean())


@pytest.mark.slow
def test_temperature_shrinks_sample_spread(trained):
    loaded = LoadedModel(trained["flow-8gaussians"])
    hot = loaded.sample(2000, seed=1, temperature=1.0)
    cold = loaded.sample(2000, seed=1, temperature=0.3)
    radius = np.linalg.norm(hot, axis=1)
    cold_r = np.linalg.norm(cold, axis=1)
    # At low temperature samples collapse towards the modes: less spread around the ring.
    assert np.std(cold_r) < np.std(radius)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_conditional_flow_on_digits(train_model, dequantization):
    """p(x|y) on labelled digits: the sampler and the bound scorer take the label (parity
    checked in training), no latent space is claimed (its z = f(x; y) needs a label the latent
    graphs do not take), the label changes a seeded sample and a label's samples repeat by
    seed, the marginal is log sum_y p(y) w_y of the per-label log weights on the same draws,
    and the Bayes classifier answers p(y|x)."""
    stored = train_model(
        "flow",
        "digits",
        1,
        n_blocks=2,
        hidden=32,
        dequantization=dequantization,
        dequant_blocks=1,
        dequant_hidden=16,
        conditional=True,
        name=f"flow-cond-{dequantization}",
    )
    assert set(stored.capabilities) == {"sample", "bound"}
    assert stored.graph("encoder") is None and stored.graph("decoder") is None
    assert {stored.graph("sampler").condition.classes, stored.graph("scorer").condition.classes} == {10}
    assert stored.metrics["test"]["conditional"]["classify"]["source"] == "bound"
    check_conditional_contract(LoadedModel(stored), "bound")


def test_conditional_flow_density_is_normalised_per_label(train_model):
    """On continuous labelled data the scorer is an exact log p(x|y): it integrates to 1 over
    the plane for each label, and the label moves it (each class's own base Gaussian)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1200)
    x = (rng.normal(size=(1200, 2)) * 0.5 + np.where(y[:, None] == 1, 1.5, -1.5)).astype(np.float32)
    data = Dataset(
        "two-blobs",
        x[:800],
        x[800:1000],
        x[1000:],
        labels={"train": y[:800], "validation": y[800:1000], "test": y[1000:]},
    )
    family = get_plugins().get("flow")
    from registry.pipeline.train import train_and_store

    stored = train_and_store(
        family,
        data,
        family.Config(n_blocks=2, hidden=16, epochs=30, batch_size=100),
        TrainControl(progress=False, seed=0),
        name="flow-cond-blobs",
    )
    assert set(stored.capabilities) == {"sample", "log_prob"}
    loaded = LoadedModel(stored)
    grid, cell = _grid(6.0, 241)
    masses = []
    for c in range(2):
        log_p = score(loaded, grid, "log_prob", labels=np.full(len(grid), c)).scores
        masses.append(float(np.exp(log_p).sum() * cell))
    assert masses == pytest.approx([1.0, 1.0], abs=0.02)
    near_one = score(loaded, np.array([[1.5, 1.5]]), "classify").probabilities[0]
    assert near_one[1] > 0.9
