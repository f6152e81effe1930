"""The autoregressive family and the step-loop samplers of the contract.

Exactness is checked where it can be enumerated or integrated, through the real server; the
loop's parity, reproducibility by seed, temperature and bad input too.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conditional_contract import check_conditional_contract

from plugins.autoregressive.config import ARConfig
from plugins.autoregressive.model import DiscretizedLogistic
from plugins.autoregressive.train import build
from registry.contract.loading import get_plugins
from registry.pipeline.export import ExportError, check_parity
from registry.runtime.graphs import StepLoop, draw_noise, loop_noise, run_loop
from registry.runtime.models import LoadedModel
from registry.runtime.store import get_model


def post(client, path, body):
    return client.post(path, json=body)


@pytest.mark.parametrize(("network", "levels"), [("made", None), ("made", 5), ("conv", 5)])
def test_outputs_depend_only_on_earlier_dimensions(network, levels):
    torch.manual_seed(0)
    config = ARConfig(network=network, hidden=64, channels=8, layers=4, dropout=0.0, conditional="softmax")
    net = build(12, levels, config, (3, 4)).eval()
    x = torch.rand(4, 12) * 4
    jac = torch.autograd.functional.jacobian(lambda a: net.network(a).sum(0), x).sum(2)  # (D, P, D)
    influence = jac.abs().sum(1)  # (D outputs, D inputs)
    assert torch.all(torch.triu(influence) == 0), "an output sees its own or a later input"
    assert torch.all(torch.tril(influence, -1)[1:, :].sum(1) > 0), "an output ignores all earlier inputs"


def test_discretised_logistic_mass_sums_to_one_over_the_levels():
    torch.manual_seed(1)
    cond = DiscretizedLogistic(17, 5)
    params = torch.randn(200, 15, dtype=torch.float64) * 3
    params[:, 5:10] = torch.rand(200, 5, dtype=torch.float64) * 20 - 2  # means across and beyond 0..16
    total = torch.logsumexp(cond.level_log_probs(params), dim=-1)
    assert torch.allclose(total, torch.zeros_like(total), atol=1e-9)


def test_step_loop_runs_the_graph_once_per_step_with_that_steps_noise():
    spec_noise = [{"name": "g", "dist": "gumbel", "dim": 3}]
    from registry.runtime.graphs import GraphSpec

    spec = GraphSpec(
        role="sampler",
        file="s.onnx",
        x_input=None,
        noise=spec_noise,
        output="o",
        loop=StepLoop(steps=4, state_dim=4),
    )
    noise = loop_noise(spec, 5, np.random.default_rng(0))
    assert noise["g"].shape == (4, 5, 3)
    seen = []

    def run(feeds):
        t = int(feeds["step"][0, 0])
        seen.append(t)
        assert feeds["step"].dtype == np.int64 and feeds["step"].shape == (5, 1)
        np.testing.assert_array_equal(feeds["g"], noise["g"][t])
        out = feeds["state"].copy()
        out[:, t] = t + 1
        return out

    state = run_loop(run, spec, 5, lambda t: {"g": noise["g"][t]})
    assert seen == [0, 1, 2, 3]
    np.testing.assert_array_equal(state, np.tile([1, 2, 3, 4], (5, 1)))
    # Temperature scales Gumbel draws (T = 0: no noise, the most likely value).
    assert not draw_noise(spec.noise, 5, np.random.default_rng(1), temperature=0.0)["g"].any()


@pytest.mark.slow
def test_parity_check_compares_the_whole_loop_and_refuses_a_wrong_reference(trained, tmp_path):
    stored = trained["autoregressive-digits"]
    assert stored.meta["parity"]["sampler_mismatch_share"] <= 1e-3
    assert stored.graph("sampler").loop == StepLoop(steps=64, state_dim=64)
    family = get_plugins().get("autoregressive")
    from plugins.autoregressive.train import train_autoregressive
    from registry.contract.family import TrainControl
    from registry.datasets import load_dataset

    data = load_dataset("digits")
    model = train_autoregressive(
        data, family.Config(epochs=1).resolve(data), TrainControl(epochs=1, progress=False)
    )
    graphs = family.export(model, tmp_path)
    check_parity(family, model, graphs, tmp_path, data.test, discrete=True)
    # A reference that feeds step t the noise of step t - 1 (an off-by-one) must be refused.
    honest = family.sample

    class OffByOne(type(family)):
        def sample(self, model, noise):
            return honest(model, {k: np.roll(v, 1, axis=0) for k, v in noise.items()})

    with pytest.raises(ExportError, match="sampler"):
        check_parity(OffByOne(), model, graphs, tmp_path, data.test, discrete=True)


@pytest.mark.slow
def test_served_probabilities_of_every_configuration_sum_to_one(server):
    client, _ = server
    configs = np.array(list(itertools.product(range(4), repeat=3)), dtype=float)
    resp = post(client, "/score", {"model": "ar-small", "x": configs.tolist()})
    assert resp.status_code == 200, resp.text
    assert resp.json()["kind"] == "log_prob"
    probs = np.exp(np.array(resp.json()["scores"]))
    assert abs(probs.sum() - 1.0) < 1e-5
    # And it learned the structure: the third value is 0 or twice the second (mod 4).
    likely = configs[probs > 0.02]
    assert np.all((likely[:, 2] == 0) | (likely[:, 2] == likely[:, 1]))


@pytest.mark.slow
def test_served_density_on_a_toy_integrates_to_one(server):
    client, _ = server
    g = np.linspace(-7, 7, 281)
    cell = (g[1] - g[0]) ** 2
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    total = 0.0
    for chunk in np.array_split(pts, math.ceil(len(pts) / 4000)):
        resp = post(client, "/score", {"model": "autoregressive-8gaussians", "x": chunk.tolist()})
        assert resp.status_code == 200, resp.text
        total += float(np.exp(np.array(resp.json()["scores"])).sum()) * cell
    assert total == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
def test_sampling_is_reproducible_by_seed_and_matches_the_runtime(server):
    client, _ = server
    body = {"model": "autoregressive-digits", "n": 8, "seed": 3}
    a = post(client, "/sample", body).json()["samples"]
    b = post(client, "/sample", body).json()["samples"]
    c = post(client, "/sample", {**body, "seed": 4}).json()["samples"]
    assert a == b and a != c
    x = np.array(a)
    assert x.shape == (8, 64) and np.all((x >= 0) & (x <= 16)) and np.all(x == np.round(x))
    local = LoadedModel(get_model("autoregressive-digits")).sample(8, seed=3)
    np.testing.assert_array_equal(x, local)
    # Temperature 0 takes the most likely level at every step: the same whatever the seed.
    cold = [post(client, "/sample", {**body, "seed": s, "temperature": 0}).json()["samples"] for s in (1, 2)]
    assert cold[0] == cold[1]


@pytest.mark.slow
def test_sampling_on_a_toy_covers_the_modes(server):
    client, _ = server
    x = np.array(
        post(client, "/sample", {"model": "autoregressive-8gaussians", "n": 800, "seed": 0}).json()["samples"]
    )
    angles = np.round(np.degrees(np.arctan2(x[:, 1], x[:, 0])) / 45) % 8
    assert len(set(angles.astype(int))) == 8


@pytest.mark.slow
@pytest.mark.parametrize(
    ("row", "problem"),
    [([0.0] * 63, "64 values"), ([17.0] + [0.0] * 63, "range 0..16"), ([0.5] + [0.0] * 63, "integer levels")],
)
def test_bad_rows_are_refused_naming_the_field(server, row, problem):
    client, _ = server
    resp = post(client, "/score", {"model": "autoregressive-digits", "x": [row]})
    assert resp.status_code == 400 and resp.json()["field"] == "x"
    assert problem in resp.json()["error"]
    resp = post(client, "/score", {"model": "autoregressive-digits", "x": [[0.0] * 64], "kind": "bound"})
    assert resp.status_code == 422 and "log_prob" in resp.json()["error"]


def test_a_step_loop_must_be_a_sampler_with_distinct_input_names():
    from pydantic import ValidationError

    from registry.runtime.graphs import GraphSpec

    loop = StepLoop(steps=3, state_dim=3)
    with pytest.raises(ValidationError, match="only a sampler"):
        GraphSpec(role="scorer", file="s.onnx", kind="log_prob", output="o", loop=loop)
    with pytest.raises(ValidationError, match="distinct names"):
        GraphSpec(
            role="sampler",
            file="s.onnx",
            x_input=None,
            output="o",
            loop=loop,
            noise=[{"name": "step", "dist": "gumbel", "dim": 2}],
        )


@pytest.mark.slow
def test_sample_cost_counts_the_steps_and_is_capped(trained):
    from services.errors import ApiError
    from services.limits import sample_limit
    from services.schemas import MAX_DRAW_ROWS
    from services.service import _sample_count

    loaded = LoadedModel(get_model("autoregressive-digits"))
    assert loaded.steps() == 64  # 10 samples run the graph 640 times
    assert LoadedModel(get_model("gaussian-digits")).steps() == 1
    # the model's own limit: the draw-row cap, or what its measured rate runs in half the deadline
    limit = sample_limit(loaded)
    assert limit <= MAX_DRAW_ROWS and limit & (limit - 1) == 0
    assert _sample_count(loaded, limit // 64, None) == 64
    with pytest.raises(ApiError) as refused:
        _sample_count(loaded, limit // 64 + 1, None)
    assert (
        refused.value.status == 400
        and refused.value.field == "n"
        and "64 sampling steps" in refused.value.message
    )


def test_every_option_is_set_once_resolved_for_each_kind_of_data(tmp_path):
    """The presets fill every option for 2-D toys, grayscale and colour images, whichever
    network is asked for (a MADE on colour needs its width too)."""
    from registry.datasets import load_dataset

    colour = tmp_path / "rgb.npy"
    np.save(colour, np.random.default_rng(0).integers(0, 4, (60, 4, 4, 3)))
    for name in ("8gaussians", "digits", str(colour)):
        data = load_dataset(name)
        for network in (None, "made"):
            resolved = ARConfig(network=network).resolve(data)
            unset = [k for k, v in resolved.model_dump().items() if v is None]
            assert not unset, (name, network, unset)
            build(data.dim, data.levels, resolved, data.image_shape)


def test_conditional_autoregressive_on_digits(train_model):
    """p(x|y) on labelled digits (the default network, a PixelCNN; MADE shares its graphs): both
    graphs take the label (parity of the whole step loop checked in training), the label changes
    a seeded sample and a label's samples repeat by seed, the scorer answers exact log p(x|y),
    the marginal is log sum_y p(y) p(x|y) of the per-label scores, and the Bayes classifier
    answers p(y|x)."""

    stored = train_model(
        "autoregressive", "digits", 1, channels=8, layers=1, conditional=True, name="ar-cond"
    )
    assert set(stored.capabilities) == {"sample", "log_prob"}
    assert {stored.graph("sampler").condition.classes, stored.graph("scorer").condition.classes} == {10}
    assert stored.meta["parity"]["sampler_mismatch_share"] <= 1e-3
    assert stored.metrics["test"]["conditional"]["classify"]["source"] == "log_prob"
    check_conditional_contract(LoadedModel(stored), "log_prob")


@pytest.mark.parametrize(("network", "shape"), [("made", (3, 4)), ("conv", (3, 4)), ("conv", (3, 4, 3))])
def test_conditional_networks_keep_the_order_and_use_the_label(network, shape):
    """With a label, each output still sees only earlier dimensions (MADE, PixelCNN and
    PixelCNN++: pixels before its own), and the label moves every output, the first's too."""
    torch.manual_seed(0)
    y = torch.tensor([[1], [2], [0], [1]])
    config = ARConfig(
        network=network, hidden=64, channels=8, layers=2, dropout=0.0, conditional="logistic", components=2
    )
    channels = shape[2] if len(shape) == 3 else 1
    net = build(12 * channels, 5, config, shape, classes=3).eval()
    for p in net.parameters():  # the output biases start at zero: move them
        p.data += 0.1 * torch.randn_like(p)
    x = torch.rand(4, 12 * channels) * 4
    jac = torch.autograd.functional.jacobian(lambda a: net.network(a, y).sum(0), x).sum(2)
    influence = jac.abs().sum(1).reshape(12, 12, channels).sum(2)  # (outputs, pixels)
    assert torch.all(torch.triu(influence) == 0), "an output sees its own or a later pixel"
    moved = (net.network(x, y) - net.network(x, (y + 1) % 3)).abs().amax(-1)  # (n, outputs)
    assert torch.all(moved > 0), "an output ignores the label"


@pytest.mark.parametrize("network", ["made", "conv"])
def test_conditional_mass_sums_to_one_for_every_label(network):
    """exp log p(x|y) over all 3^4 configurations is 1 for each label y."""
    torch.manual_seed(0)
    config = ARConfig(network=network, hidden=32, channels=8, layers=1, dropout=0.0, conditional="logistic")
    net = build(4, 3, config, (2, 2), classes=4).eval()
    for p in net.parameters():
        p.data += 0.1 * torch.randn_like(p)
    grid = torch.tensor(list(itertools.product(range(3), repeat=4)), dtype=torch.float32)
    with torch.no_grad():
        for c in range(4):
            total = torch.exp(net.log_prob(grid, torch.full((len(grid), 1), c))).sum()
            assert abs(float(total) - 1.0) < 1e-5
