"""The GAN on colour images: DCGAN's convolutional generator and discriminator (arch=conv).

Defaults follow the data kind (conv on colour images, the MLPs everywhere else); the networks
take any height and width divisible by 4; the served graphs (sampler, discriminator) match
PyTorch; training and sampling repeat by seed; a conditional conv GAN trains, exports and
samples each class. Trained on 8x8x3 images at 4 levels, a few seconds each.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugins.gan.config import COLOUR_CHANNELS, COLOUR_LATENT, GANConfig
from plugins.gan.model import ConvDiscriminator, ConvGenerator, stages
from registry.contract.family import TrainControl
from registry.contract.loading import get_plugins
from registry.datasets import load_dataset
from registry.pipeline.evaluate import held_out_rows
from registry.pipeline.train import train_and_store
from registry.runtime.models import LoadedModel
from registry.runtime.scoring import score
from registry.runtime.two_sample import jsd_lower_bound

# Class k of the conditional set is one colour: a level of 3 in channel k, 0 in the others.
COLOURS = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3]], dtype=np.float32)


def _stack(tmp_path, n: int = 240, levels: int = 4, seed: int = 0, name: str = "rgb.npy") -> str:
    """8x8x3 images of one colour each (a random level per channel, the same at every pixel)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, levels, (n, 1, 1, 3))
    np.save(tmp_path / name, np.broadcast_to(colours, (n, 8, 8, 3)).astype(np.float32))
    return str(tmp_path / name)


def _classes(tmp_path, n: int = 300, seed: int = 0) -> tuple[str, str]:
    """8x8x3 images whose class is their colour (COLOURS), a quarter of the pixels at a random
    level so that the images vary within a class; (images file, labels file)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.broadcast_to(COLOURS[y][:, None, None, :], (n, 8, 8, 3)).copy()
    noisy = rng.random((n, 8, 8, 1)) < 0.25
    x = np.where(noisy, rng.integers(0, 4, (n, 8, 8, 3)), x).astype(np.float32)
    np.save(tmp_path / "cls.npy", x)
    np.save(tmp_path / "cls_y.npy", y)
    return str(tmp_path / "cls.npy"), str(tmp_path / "cls_y.npy")


def test_conv_is_the_default_on_colour_images_and_mlp_elsewhere(tmp_path):
    """Colour images get DCGAN with its sizes; digits, grey patches, shapes and 2-D toys keep
    every option they had (the MLPs, latent 16, validation every 5 epochs). A conv GAN on data
    without an image shape, or of a size not divisible by 4, is refused by name."""
    colour = GANConfig().resolve(load_dataset(_stack(tmp_path)))
    assert (colour.arch, colour.channels, colour.latent) == ("conv", COLOUR_CHANNELS, COLOUR_LATENT)
    assert colour.eval_steps is not None
    old = {"arch": "mlp", "latent": 16, "hidden": 256, "depth": 3, "eval_every": 5, "eval_steps": None}
    old |= {"channels": None, "batch_size": None, "epochs": None, "lr": 2e-4}
    for name in ("digits", "patches", "shapes", "8gaussians"):
        resolved = GANConfig().resolve(load_dataset(name))
        assert {k: getattr(resolved, k) for k in old} == old, name
    # On request a grey image gets DCGAN too, validated by epochs as before.
    grey = GANConfig(arch="conv").resolve(load_dataset("digits"))
    assert (grey.arch, grey.channels, grey.eval_steps) == ("conv", COLOUR_CHANNELS, None)
    with pytest.raises(ValueError, match="arch=conv needs image data; 'moons'"):
        GANConfig(arch="conv").resolve(load_dataset("moons"))
    odd = np.random.default_rng(0).integers(0, 4, (40, 6, 8, 3)).astype(np.float32)
    np.save(tmp_path / "odd.npy", odd)
    with pytest.raises(ValueError, match=r"divisible by 4; .* is 6x8"):
        GANConfig().resolve(load_dataset(str(tmp_path / "odd.npy")))


@pytest.mark.parametrize(
    ("shape", "n", "top"),
    [((4, 4, 3), 1, (2, 2)), ((8, 8, 3), 1, (4, 4)), ((12, 8, 3), 1, (6, 4)), ((32, 32, 3), 3, (4, 4))],
)
def test_dcgan_takes_any_size_divisible_by_4_and_samples_rows_alone(shape, n, top):
    """From z to a map of 4 or more pixels a side (2 for a 4x4 image) and back up by stride-2
    steps: rows come out flat, channels-last and on the levels; D gives one logit per row. In
    eval mode (sampling, export) BatchNorm uses its running statistics: a row's sample is the
    same alone as in a batch."""
    torch.manual_seed(0)
    h, w, c = shape
    assert stages(shape) == n
    gen = ConvGenerator(8, shape, 4, 4, classes=3).eval()
    disc = ConvDiscriminator(shape, 4, 4, classes=3).eval()
    assert gen.top[1:] == top
    z, y = torch.randn(5, 8), torch.tensor([[0], [1], [2], [0], [1]])
    with torch.no_grad():
        x = gen.sample(z, y)
        alone = gen.sample(z[2:3], y[2:3])
        logit = disc.logit(x, y)
    assert x.shape == (5, h * w * c)
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert torch.equal(alone[0], x[2])
    assert logit.shape == (5,) and torch.isfinite(logit).all()


def test_freezing_the_spectral_norm_keeps_the_eval_discriminator():
    """Training leaves D's weights spectrally normalised by their power-iteration vectors; folding
    them into plain weights (for export and the stored weights) keeps eval mode's logits, and
    no weight is left parametrised."""
    torch.manual_seed(0)
    disc = ConvDiscriminator((8, 8, 3), 4, 8, classes=3)
    x, y = torch.rand(16, 192) * 3, torch.randint(0, 3, (16, 1))
    disc.train()
    for _ in range(3):  # power iterations move u and v
        disc.logit(x, y)
    disc.eval()
    with torch.no_grad():
        before = disc.logit(x, y)
        disc.freeze()
        after = disc.logit(x, y)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in disc.modules())
    assert torch.allclose(before, after, atol=1e-6) and before.std() > 0


def test_training_repeats_by_seed(tmp_path):
    """The same seed gives the same weights (G's BatchNorm statistics too); another seed does not."""
    family = get_plugins().get("gan")
    data = load_dataset(_stack(tmp_path, n=96))
    config = GANConfig(channels=4, latent=4)

    def weights(seed: int) -> dict[str, np.ndarray]:
        model = family.train(data, config, TrainControl(seed=seed, epochs=2, progress=False))
        return family.weights(model)

    a, b, other = weights(0), weights(0), weights(1)
    assert any("running_mean" in k for k in a)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], other[k]) for k in a)


@pytest.mark.slow
def test_colour_gan_trains_exports_and_serves(train_model, tmp_path):
    """8x8x3 at 4 levels with the defaults: DCGAN, graphs that pass parity, seeded samples on the
    levels that repeat, a discriminator that answers P(real), and the stored JSD bound is that
    served discriminator's on the held-out rows against the evaluation's samples."""
    path = _stack(tmp_path)
    stored = train_model("gan", path, 4, channels=8, name="gan-rgb")
    config = stored.meta["config"]
    assert (config["arch"], config["channels"], config["d_norm"]) == ("conv", 8, "spectral")
    assert stored.capabilities == ["discriminate", "sample"]
    parity = stored.meta["parity"]
    # G's BatchNorm in eval mode in the graph: a train-mode one would move most samples' levels.
    assert parity["discriminator"] < 1e-4 and parity["sampler_mismatch_share"] < 0.01, parity
    loaded = LoadedModel(stored)
    drawn = loaded.sample(6, seed=4)
    assert drawn.shape == (6, 192) and set(np.unique(drawn)) <= {0.0, 1.0, 2.0, 3.0}
    assert np.array_equal(drawn, loaded.sample(6, seed=4))
    assert not np.array_equal(drawn, loaded.sample(6, seed=5))
    test = load_dataset(path).test
    p_real = score(loaded, test, "discriminator").scores
    assert np.all((p_real > 0) & (p_real < 1)) and p_real.std() > 0
    two = stored.metrics["test"]["two_sample"]
    rows = two["rows"]
    again = jsd_lower_bound(
        loaded.logits(held_out_rows(test, rows, 0)), loaded.logits(loaded.sample(rows, seed=0))
    )
    assert two["jsd"]["jsd_lower_bound"] == pytest.approx(again["jsd_lower_bound"], abs=1e-6)
    assert stored.meta["train"]["rows_per_second"] > 0


@pytest.mark.slow
def test_conditional_conv_gan_samples_each_class(bentoml_home, tmp_path):
    """Images whose class is their colour: a conditional conv GAN, G(z, y) against a projection
    D(x, y), trains, exports both graphs with the label (parity), and its samples of each class
    are nearest, on average, to that class's colour; D judges a row given a label."""
    torch.set_num_threads(2)
    path, labels = _classes(tmp_path)
    family = get_plugins().get("gan")
    stored = train_and_store(
        family,
        load_dataset(path, labels=labels),
        GANConfig(channels=8, latent=8, lr=2e-3, batch_size=32),
        TrainControl(seed=0, epochs=20, progress=False),
        name="gan-rgb-cond",
        plugin={"name": "test", "distribution": "genreg"},
    )
    assert stored.meta["config"]["arch"] == "conv"
    assert {stored.graph("sampler").condition.classes, stored.graph("discriminator").condition.classes} == {3}
    parity = stored.meta["parity"]
    # G's BatchNorm in eval mode in the graph: a train-mode one would move most samples' levels.
    assert parity["discriminator"] < 1e-4 and parity["sampler_mismatch_share"] < 0.01, parity
    loaded = LoadedModel(stored)
    for k in range(3):
        x = loaded.sample(64, seed=k, labels=np.full(64, k))
        mean = x.reshape(64, 64, 3).mean((0, 1))  # the samples' average colour
        distance = np.abs(COLOURS - mean).sum(1)
        assert distance.argmin() == k, (k, mean)
    x = load_dataset(path, labels=labels).test[:30]
    p = [score(loaded, x, "discriminator", labels=np.full(30, k)).scores for k in range(3)]
    assert not np.allclose(p[0], p[1])
