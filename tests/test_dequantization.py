"""Flow quality: spline couplings, variational dequantisation, importance-weighted bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from plugins.flow.spline import spline_forward, spline_inverse
from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import Dataset, load_dataset
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import bound_estimates, score
from registry.runtime.store import get_model


def _grid4(seed: int = 0) -> Dataset:
    """2-D discrete data on a 4 x 4 lattice with random cell probabilities."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(16))
    cells = rng.choice(16, size=4000, p=probs)
    x = np.stack([cells // 4, cells % 4], 1).astype(np.float32)
    return Dataset("grid4", x[:3000], x[3000:3500], x[3500:], levels=4)


def test_spline_inverts_and_its_log_det_is_the_derivative():
    torch.manual_seed(0)
    x = torch.randn(2000, 3, dtype=torch.float64) * 3  # a third fall in the identity tails
    params = torch.randn(2000, 3, 3 * 6 - 1, dtype=torch.float64)
    y, log_det = spline_forward(x, params, 4.0)
    assert torch.allclose(spline_inverse(y, params, 4.0), x, atol=1e-9)
    step = 1e-6
    hi, _ = spline_forward(x + step, params, 4.0)
    lo, _ = spline_forward(x - step, params, 4.0)
    assert torch.allclose(log_det, torch.log((hi - lo) / (2 * step)), atol=1e-4)
    # Monotone and onto [-B, B]: ordered inputs stay ordered, the ends stay fixed.
    line = torch.linspace(-5, 5, 1001, dtype=torch.float64)[:, None]
    out, _ = spline_forward(line, params[:1, :1].expand(1001, 1, -1), 4.0)
    assert torch.all(out[1:] > out[:-1])
    assert out[100].item() == pytest.approx(-4.0) and out[900].item() == pytest.approx(4.0)


@pytest.fixture(scope="module")
def grid4_variational():
    data = _grid4()
    fam = get_plugins().get("flow")
    cfg = fam.Config(
        n_blocks=4,
        hidden=32,
        epochs=12,
        batch_size=256,
        dropout=0.0,
        weight_decay=0.0,
        dequantization="variational",
        dequant_hidden=32,
        dequant_blocks=2,
    )
    return fam, fam.train(data, cfg, TrainControl(seed=0, progress=False))


@pytest.mark.parametrize("cell", [(0, 0), (3, 2)])
def test_variational_q_is_a_density_on_the_unit_square(grid4_variational, cell):
    """q(u|x) integrates to 1 over (0, 1)^2, after training (integrated in logit coordinates,
    v = logit(u), so mass piled near the cube's faces is counted)."""
    _, model = grid4_variational
    q = model.dequantizer.double()
    try:
        v = torch.linspace(-20, 20, 801, dtype=torch.float64)
        vv = torch.stack(torch.meshgrid(v, v, indexing="ij"), -1).reshape(-1, 2)
        x = torch.tensor([cell], dtype=torch.float64).expand(len(vv), 2)
        with torch.no_grad():
            log_q_u = q.log_density(x, torch.sigmoid(vv))
        log_jac = (F.logsigmoid(vv) + F.logsigmoid(-vv)).sum(1)
        mass = float(torch.exp(log_q_u + log_jac).sum() * (v[1] - v[0]) ** 2)
    finally:
        model.dequantizer.float()
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_variational_bound_is_below_the_cell_mass(grid4_variational):
    """E_q[log p(x+u) - log q(u|x)] <= log P(x) on every cell, and so is the k = 16 IW bound."""
    fam, model = grid4_variational
    m = 60
    offsets = (np.arange(m) + 0.5) / m
    ou, ov = np.meshgrid(offsets, offsets)
    inner = np.stack([ou.ravel(), ov.ravel()], 1).astype(np.float32)
    rng = np.random.default_rng(1)
    for a in range(4):
        for b in range(4):
            pts = np.array([a, b], dtype=np.float32) + inner
            log_mass = math.log(np.exp(model.flow.log_prob(torch.as_tensor(pts)).detach().numpy()).mean())
            x = np.tile(np.array([[a, b]], dtype=np.float32), (4000, 1))
            log_w = fam.bound(model, x, {"eps": rng.standard_normal(x.shape).astype(np.float32)})
            elbo, iw = bound_estimates(log_w.reshape(-1, 16))
            se = log_w.std() / math.sqrt(len(log_w))
            assert elbo.mean() <= log_mass + 3 * se
            assert iw.mean() <= log_mass + 3 * iw.std() / math.sqrt(len(iw)) + 1e-3


def test_variational_dequantization_refuses_continuous_data():
    fam = get_plugins().get("flow")
    with pytest.raises(ValueError, match="discrete data only"):
        fam.train(
            load_dataset("8gaussians"),
            fam.Config(dequantization="variational", epochs=1),
            TrainControl(seed=0, progress=False),
        )


def test_patches_come_from_disjoint_regions():
    data = load_dataset("patches")
    assert data.levels == 256 and data.dim == 64 and data.image_shape == (8, 8, 1)
    assert len(data.train) > 4 * len(data.test) > 0
    for split in (data.train, data.validation, data.test):
        assert split.min() >= 0 and split.max() <= 255 and np.all(split == np.round(split))
    # No test patch occurs in training (disjoint bands; an exact repeat would be a leak).
    train = {row.tobytes() for row in data.train}
    assert not any(row.tobytes() in train for row in data.test)


@pytest.mark.slow
def test_bounds_are_ordered_on_digits(trained):
    """uniform bound <= variational bound and k = 1 <= k = 16, on the digits test split,
    each within Monte-Carlo error (3 standard errors of the per-row difference)."""
    test = load_dataset("digits").test
    uniform = LoadedModel(trained["flow-digits"])
    variational = LoadedModel(trained["flowvd-digits"])
    assert variational.stored.graph("scorer", "bound").noise[0].name == "eps"
    elbo_u, iw_u = bound_estimates(uniform.log_weights(test, seed=0, k=16))
    elbo_v, iw_v = bound_estimates(variational.log_weights(test, seed=0, k=16))

    def at_most(lo: np.ndarray, hi: np.ndarray) -> None:
        diff = hi - lo
        assert diff.mean() >= -3 * diff.std() / math.sqrt(len(diff)), (lo.mean(), hi.mean())

    at_most(elbo_u, elbo_v)
    at_most(iw_u, iw_v)
    at_most(elbo_v, iw_v)
    at_most(elbo_u, iw_u)
    # The gain the learned q(u|x) buys is real, not noise: bits/dim better by a clear margin.
    to_bpd = 1 / (64 * math.log(2))
    assert (elbo_v.mean() - elbo_u.mean()) * to_bpd > 0.02
    assert (
        trained["flowvd-digits"].metrics["test"]["bits_per_dim"]
        < trained["flow-digits"].metrics["test"]["bits_per_dim"]
    )


@pytest.mark.slow
def test_variational_score_over_http_matches_onnx_in_process(trained, server):
    client, _ = server
    rows = load_dataset("digits").test[:40]
    for k in (1, 16):
        body = {"model": "flowvd-digits", "x": rows.tolist(), "kind": "bound", "seed": 3, "k": k}
        resp = client.post("/score", json=body)
        assert resp.status_code == 200, resp.text
        got = resp.json()
        local = score(LoadedModel(get_model("flowvd-digits")), rows, "bound", seed=3, k=k)
        expected, bpd = local.scores, local.bits_per_dim
        np.testing.assert_allclose(got["scores"], expected, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got["bits_per_dim"], bpd, rtol=0, atol=1e-9)
        assert "stderr" in got and got["stderr"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_toy_flows_score_finite_everywhere(trained, train_model, coupling):
    """Far outside the data, too: no NaN or infinite score on a wide grid, for both couplings
    (each stored through the normal path, so its export passed the parity check)."""
    if coupling == "spline":
        stored = trained["flow-8gaussians"]  # the default couplings on 2-D data
    else:
        stored = train_model("flow", "8gaussians", 6, name="flowaffine-8gaussians", coupling="affine")
    assert stored.meta["config"]["coupling"] == coupling
    loaded = LoadedModel(stored)

    def grid(g: np.ndarray) -> np.ndarray:
        xx, yy = np.meshgrid(g, g)
        return np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)

    far = score(loaded, grid(np.linspace(-1e3, 1e3, 101)), "log_prob").scores
    near = score(loaded, grid(np.linspace(-8, 8, 201)), "log_prob").scores
    assert np.all(np.isfinite(far)) and np.all(np.isfinite(near))
    # A density, not just finite numbers: it integrates to about 1 on the data's square.
    assert np.exp(near).sum() * (16 / 200) ** 2 == pytest.approx(1.0, abs=0.05)
