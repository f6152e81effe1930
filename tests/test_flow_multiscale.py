"""The flow at image scale: squeeze, convolutional couplings and factor-outs (plugins/flow/multiscale.py).

The change of variables is checked against the full Jacobian on a 4x4x3 image (48 values, two
scales), the inverse exactly, and the whole path (default on colour images, train, export with
parity, store, serve, encode/decode) on 8x8x3 images at 4 levels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugins.common.invertible import squeeze, to_image, to_rows, unsqueeze
from plugins.flow.config import FlowConfig
from plugins.flow.dequantize import VariationalDequantizer
from plugins.flow.multiscale import MultiScaleFlow
from registry.contract.dataset import Dataset
from registry.runtime import latent
from registry.runtime.models import LoadedModel


def _flow(transform: str, classes: int | None) -> MultiScaleFlow:
    torch.manual_seed(0)
    flow = MultiScaleFlow(
        (4, 4, 3),
        None,
        scales=2,
        n_blocks=2,
        hidden=16,
        dropout=0.0,
        clamp=2.0,
        alpha=0.01,
        seed=0,
        transform=transform,
        classes=classes,
    ).double()
    x = torch.randn(16, 48, dtype=torch.float64)
    flow.train()
    flow.log_prob(x, None if classes is None else torch.zeros(16, 1, dtype=torch.int64))  # actnorm's init
    with torch.no_grad():  # away from the identity the couplings start at
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flow.eval()
    flow.freeze_inverse()
    return flow


def test_squeeze_and_the_image_reshape_invert_exactly():
    rows = torch.arange(2 * 48, dtype=torch.float32).reshape(2, 48)
    image = to_image(rows, (4, 4, 3))
    assert image.shape == (2, 3, 4, 4) and image[0, 1, 0, 0] == rows[0, 1]  # channels last in rows
    squeezed = squeeze(image)
    assert squeezed.shape == (2, 12, 2, 2)
    assert torch.equal(to_rows(unsqueeze(squeezed)), rows)


@pytest.mark.parametrize("transform", ["affine", "spline"])
@pytest.mark.parametrize("classes", [None, 3])
def test_log_determinant_is_the_jacobians_and_the_inverse_is_exact(transform, classes):
    flow = _flow(transform, classes)
    x = torch.randn(1, 48, dtype=torch.float64)
    label = None if classes is None else torch.tensor([[2]])
    z, log_det = flow._forward(x, label)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow._forward(v, label)[0], x).reshape(48, 48)
    assert torch.slogdet(jacobian)[1].item() == pytest.approx(log_det.item(), abs=1e-6)
    context = None if label is None else flow.label(label)
    assert torch.allclose(flow._inverse(z, context), flow.pre(x)[0], atol=1e-5)
    assert z.shape == (1, 48)


def test_variational_dequantizer_on_images_is_a_density_of_its_own_draws():
    torch.manual_seed(1)
    q = VariationalDequantizer(48, 4, hidden=16, n_blocks=2, image_shape=(4, 4, 3)).double()
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, 4, (3, 48)).double()
    eps = torch.randn(3, 48, dtype=torch.float64)
    u, log_q = q(x, eps)
    assert ((u > 0) & (u < 1)).all()
    assert torch.allclose(q.log_density(x, u), log_q, atol=1e-6)
    # log q is the change of variables from eps: checked against the Jacobian of eps -> u.
    jacobian = torch.autograd.functional.jacobian(lambda e: q(x[:1], e)[0], eps[:1]).reshape(48, 48)
    log_normal = -0.5 * (eps[0] ** 2).sum() - 24 * np.log(2 * np.pi)
    assert log_q[0].item() == pytest.approx((log_normal - torch.slogdet(jacobian)[1]).item(), abs=1e-6)


def _colour(n: int, seed: int = 0) -> np.ndarray:
    stack = np.random.default_rng(seed).integers(0, 4, (n, 8, 8, 3)).astype(np.float32)
    stack[:, :, :, 1:] = stack[:, :, :, :1]  # grey pixels: structure between the channels
    return stack.reshape(n, -1)


def test_multiscale_is_the_default_on_colour_images_only():
    colour = Dataset("c", _colour(40), _colour(10, 1), _colour(10, 2), levels=4, image_shape=(8, 8, 3))
    resolved = FlowConfig().resolve(colour)
    assert resolved.arch == "multiscale" and resolved.scales == 3
    grey = np.zeros((40, 64), np.float32)
    digits_like = Dataset("g", grey, grey[:10], grey[:10], levels=17, image_shape=(8, 8, 1))
    assert FlowConfig().resolve(digits_like).arch == "mlp"
    assert FlowConfig().resolve(digits_like).n_blocks == 6  # the digits preset, unchanged
    with pytest.raises(ValueError, match="scales=4"):
        FlowConfig(scales=4).resolve(colour)


@pytest.mark.slow
@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_colour_images_train_export_and_serve(train_model, tmp_path, dequantization):
    np.save(tmp_path / "rgb.npy", _colour(240).reshape(240, 8, 8, 3))
    stored = train_model(
        "flow",
        str(tmp_path / "rgb.npy"),
        3,
        n_blocks=1,
        hidden=16,
        dequantization=dequantization,
        dequant_blocks=2,
        dequant_hidden=16,
        name=f"flow-ms-{dequantization}",
    )
    assert stored.meta["config"]["arch"] == "multiscale"
    served = LoadedModel(stored)
    rows = served.sample(6, seed=3)
    assert rows.shape == (6, 192) and set(np.unique(rows)) <= {0.0, 1.0, 2.0, 3.0}
    assert np.array_equal(rows, served.sample(6, seed=3))
    bpd = stored.metrics["test"]["bits_per_dim"]
    assert bpd < 2.0  # below the uniform model's log2(4): the grey pixels are learnt
    # The latent: z = f(x + u), and the exact inverse gives x + u back.
    x = _colour(5, 7)
    encoded = latent.encode(served, latent.check_encode(served, x, None), seed=1)
    back = latent.decode(served, latent.check_decode(served, encoded.z, None), seed=None)
    assert np.allclose(back, encoded.dequantized, atol=1e-3)
    assert np.array_equal(np.floor(back + 1e-4), x)
