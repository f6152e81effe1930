"""The autoregressive family on colour images: PixelCNN++ with a per-pixel logistic mixture.

Exactness is checked where the space can be enumerated (2x1x3 at 4 levels: 4,096 images), the
causal order by gradients, sampling against the exact probabilities, and the whole path (train,
export with the loop's parity, store, serve) on 4x4x3 images.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from plugins.autoregressive.config import ARConfig
from plugins.autoregressive.pixel_mixture import PixelLogisticMixture
from plugins.autoregressive.train import build
from registry.runtime.graphs import StepLoop
from registry.runtime.models import LoadedModel

CONFIG = ARConfig(network="conv", conditional="logistic", components=3, channels=8, layers=2, dropout=0.0)


def _random_net(shape: tuple[int, int, int], levels: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    net = build(shape[0] * shape[1] * shape[2], levels, CONFIG, shape).eval()
    with torch.no_grad():  # away from the initialisation, whose outputs are nearly uniform
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return net


def _every_image(dim: int, levels: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=dim)), dtype=torch.float32)


def test_probabilities_of_every_colour_image_sum_to_one():
    net = _random_net((2, 1, 3))
    with torch.no_grad():
        log_p = net.log_prob(_every_image(6, 4))
    assert torch.logsumexp(log_p.double(), 0).exp().item() == pytest.approx(1.0, abs=1e-5)
    assert log_p.max() - log_p.min() > 3  # far from uniform: the sum is not trivially one


def test_each_pixel_sees_every_earlier_pixel_and_nothing_of_its_own():
    net = _random_net((4, 4, 3))
    x = torch.randint(0, 4, (1, 48)).float().requires_grad_(True)
    params = net.network(x)  # (1, 16 pixels, P)
    for pixel in range(16):
        (grad,) = torch.autograd.grad(params[0, pixel].sum(), x, retain_graph=True)
        seen = grad.reshape(16, 3).abs().sum(1) > 0
        assert not seen[pixel:].any(), f"pixel {pixel} sees itself or a later pixel"
        assert seen[:pixel].all(), f"pixel {pixel} misses an earlier pixel (a blind spot)"


def test_a_later_channel_depends_on_the_earlier_channels_of_its_pixel():
    """R, then G given R, then B given R and G, at 256 levels: R moves G's and B's means, and
    summing the pixel's mass over every G and B gives R's own mixture mass back."""
    from plugins.common.logistic import log_mass

    torch.manual_seed(2)
    mix = PixelLogisticMixture(levels=256, channels=3, components=2)
    params = torch.randn(1, mix.params, dtype=torch.float64)
    params[0, -6:] = 2.0  # strong within-pixel coefficients
    low, high = torch.tensor([[10.0, 128.0, 128.0]]), torch.tensor([[240.0, 128.0, 128.0]])
    assert not torch.allclose(mix.log_prob(params, low.double()), mix.log_prob(params, high.double()))
    rest = torch.cartesian_prod(torch.arange(256.0), torch.arange(256.0)).double()  # every (G, B)
    pixels = torch.cat([torch.full((len(rest), 1), 10.0, dtype=torch.float64), rest], 1)
    summed = torch.logsumexp(mix.log_prob(params.expand(len(rest), -1), pixels), 0)
    log_w, mean, log_scale, _ = mix.split(params)
    red = torch.logsumexp(log_w[0] + log_mass(torch.tensor(10.0), mean[0, 0], log_scale[0, 0], 256), 0)
    assert summed.item() == pytest.approx(red.item(), abs=1e-9)


def test_samples_follow_the_exact_probabilities():
    net = _random_net((2, 1, 3))
    n = 100_000
    gen = torch.Generator().manual_seed(1)
    g = -torch.log(-torch.log(torch.rand(2, n, 12, generator=gen)))
    with torch.no_grad():
        drawn = net.sample({"g": g}, 2)
        p = net.log_prob(_every_image(6, 4)).double().exp()
    index = (drawn * torch.tensor([4.0 ** (5 - i) for i in range(6)])).sum(1).long()
    seen = torch.bincount(index, minlength=4096).double() / n
    # as close as n draws from the exact probabilities themselves are
    reference = torch.bincount(torch.multinomial(p, n, replacement=True, generator=gen), minlength=4096) / n
    assert 0.5 * (seen - p).abs().sum() < 1.3 * 0.5 * (reference - p).abs().sum()


def test_colour_needs_the_logistic_mixture():
    with pytest.raises(ValueError, match="conditional=logistic"):
        build(48, 4, ARConfig(network="conv", conditional="softmax"), (4, 4, 3))


@pytest.mark.slow
def test_colour_images_train_export_and_sample_a_pixel_per_step(train_model, tmp_path):
    stack = np.random.default_rng(0).integers(0, 4, (240, 4, 4, 3)).astype(np.float32)
    stack[:, :, 1:] = stack[:, :, :1]  # each row one colour: structure to learn
    np.save(tmp_path / "rgb.npy", stack)
    stored = train_model(
        "autoregressive",
        str(tmp_path / "rgb.npy"),
        20,
        channels=8,
        layers=1,
        components=2,
        lr=1e-2,
        dropout=0.0,
        name="pixelcnn-rgb",
    )
    assert stored.meta["config"]["network"] == "conv"
    assert stored.graph("sampler").loop == StepLoop(steps=16, state_dim=48)
    assert stored.meta["parity"]["sampler_mismatch_share"] <= 1e-3
    served = LoadedModel(stored)
    rows = served.sample(8, seed=3)
    assert rows.shape == (8, 48) and set(np.unique(rows)) <= {0.0, 1.0, 2.0, 3.0}
    assert np.array_equal(rows, served.sample(8, seed=3))
    bpd = stored.metrics["test"]["bits_per_dim"]
    assert 0.5 < bpd < 1.0  # between the rows' entropy (0.5) and the uniform log2(4) = 2


@pytest.mark.parametrize("blocks", [1, 2])
def test_a_step_sees_only_a_window_of_rows_and_gets_the_whole_images_parameters(blocks):
    """The sampler's step runs the network on `reach` rows ending at the pixel's: the reach is
    the receptive field (gradients), and the window's parameters are the whole image's."""
    torch.manual_seed(3)
    config = ARConfig(
        network="conv", conditional="logistic", components=2, channels=8, layers=blocks, dropout=0.0
    )
    net = build(10 * 3 * 3, 4, config, (10, 3, 3)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    reach = net.network.reach
    assert reach < 10
    x = torch.randint(0, 4, (1, 90)).float().requires_grad_(True)
    params = net.network(x)  # (1, 30 pixels, P)
    (grad,) = torch.autograd.grad(params[0, 29].sum(), x)  # row 9, column 2
    seen_rows = (grad.reshape(10, 9).abs().sum(1) > 0).nonzero().reshape(-1)
    assert seen_rows.min().item() == 10 - reach  # the reach is the receptive field, exactly
    x = x.detach().repeat(2, 1)
    mix = net.mixture
    for pixel in range(30):
        step = torch.full((2, 1), pixel, dtype=torch.int64)
        g = torch.zeros(2, 3 * 4)
        g[1] = torch.linspace(-2, 2, 12)
        whole = mix.sample(net.network(x)[:, pixel], g)
        stepped = net.step(x, step, g).reshape(2, 30, 3)[:, pixel]
        assert torch.equal(whole, stepped), pixel
