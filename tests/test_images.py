"""Images with channels: (height, width, channels) rows, channels last, from the loaders to the PNG.

Small colour images (8x8x3 at 4 levels, 2x2x3 where a space must be enumerable) keep these
checks to seconds; the 32x32 figures belong in benchmarks/.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from registry.contract.dataset import DataError, Dataset
from registry.datasets import load_dataset, load_patches_rgb
from registry.datasets.builtin import PATCH_BANDS, RGB_PATCH_SIZE
from registry.runtime.images import ShapeError, image_shape, parse_image_shape
from registry.runtime.png import png_grid


def _stack(n: int = 40, shape: tuple[int, ...] = (8, 8, 3), levels: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, levels, (n, *shape)).astype(np.float32)


def test_a_colour_stack_is_an_image_of_three_channels_with_rows_channels_last(tmp_path):
    stack = _stack()
    np.save(tmp_path / "rgb.npy", stack)
    data = load_dataset(str(tmp_path / "rgb.npy"))
    assert data.image_shape == (8, 8, 3) and data.dim == 192 and data.levels == 4
    rows = np.concatenate([data.train, data.validation])
    # every row is one image flattened channels-last: a pixel's R, G, B next to each other
    assert {r.tobytes() for r in rows} == {img.reshape(-1).tobytes() for img in stack}
    assert data.describe()["image_shape"] == [8, 8, 3]


def test_grayscale_stacks_and_stored_two_number_shapes_are_one_channel(tmp_path):
    np.save(tmp_path / "gray.npy", _stack(shape=(8, 8)))
    assert load_dataset(str(tmp_path / "gray.npy")).image_shape == (8, 8, 1)
    assert load_dataset("digits").image_shape == (8, 8, 1)
    assert image_shape([8, 8]) == (8, 8, 1)  # described before channels were
    assert image_shape(None) is None


@pytest.mark.parametrize(
    ("shape", "named"),
    [((8, 8, 5), "[40, 8, 8, 5]"), ((2, 8, 8, 3), "[40, 2, 8, 8, 3]")],
)
def test_a_stack_of_other_channels_or_dimensions_is_refused_naming_its_shape(tmp_path, shape, named):
    np.save(tmp_path / "odd.npy", _stack(shape=shape))
    with pytest.raises(DataError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_dataset(str(tmp_path / "odd.npy"))


def test_flat_rows_take_an_image_shape_and_a_contradiction_is_refused(tmp_path):
    stack = _stack()
    csv = tmp_path / "rgb.csv"
    np.savetxt(csv, stack.reshape(len(stack), -1), fmt="%d", delimiter=",")
    assert load_dataset(str(csv)).image_shape is None  # flat rows, no shape given
    assert load_dataset(str(csv), image_shape=(8, 8, 3)).image_shape == (8, 8, 3)
    with pytest.raises(DataError, match="4,4,3 holds 48 values a row, but the rows have 192"):
        load_dataset(str(csv), image_shape=(4, 4, 3))
    np.save(tmp_path / "rgb.npy", stack)
    with pytest.raises(DataError, match="holds images of shape 8,8,3, but --image-shape says 8,8,1"):
        load_dataset(str(tmp_path / "rgb.npy"), image_shape=(8, 8, 1))
    with pytest.raises(DataError, match="--image-shape applies to user files"):
        load_dataset("digits", image_shape=(8, 8, 1))


def test_a_validation_stack_of_another_shape_is_refused(tmp_path):
    np.save(tmp_path / "train.npy", _stack(shape=(8, 8, 3)))
    np.save(tmp_path / "val.npy", _stack(shape=(8, 24), seed=1))  # as wide, but grayscale 8x24
    with pytest.raises(DataError, match="images of shape 8,24,1, but the training data's are 8,8,3"):
        load_dataset(str(tmp_path / "train.npy"), validation=tmp_path / "val.npy")


@pytest.mark.parametrize("text", ["8,8,2", "8,8,3,1", "8;8;3", "0,8,3"])
def test_an_image_shape_option_that_is_not_h_w_c_is_refused(text):
    with pytest.raises(ShapeError, match="image shape"):
        parse_image_shape(text)
    assert parse_image_shape("32,32,3") == (32, 32, 3) and parse_image_shape("8x8") == (8, 8, 1)


def test_a_dataset_whose_shape_does_not_fill_its_rows_is_refused():
    rows = np.zeros((4, 10), np.float32)
    with pytest.raises(DataError, match=r"image shape \[2, 2, 3\] holds 12 values"):
        Dataset("x", rows, rows, rows, levels=2, image_shape=(2, 2, 3))


def test_patches_rgb_comes_from_disjoint_bands_of_the_bundled_photographs():
    from sklearn.datasets import load_sample_images

    data = load_patches_rgb()
    size = RGB_PATCH_SIZE
    assert data.image_shape == (size, size, 3) and data.levels == 256 and data.dim == 3072
    assert len(data.train) >= 10_000 and len(data.validation) > 0 and len(data.test) > 0
    image = load_sample_images().images[0]
    width = image.shape[1]
    test_from = int(PATCH_BANDS[1] * width)
    # the first patch of each split is the top-left window of its band, channels last
    assert np.array_equal(data.train[0].reshape(size, size, 3), image[:size, :size])
    assert np.array_equal(data.test[0].reshape(size, size, 3), image[:size, test_from : test_from + size])
    # no training patch reaches into the validation band (train patches end before it)
    train_cols = (int(PATCH_BANDS[0] * width) - size) // 4 + 1
    last = data.train[train_cols - 1].reshape(size, size, 3)
    left = (train_cols - 1) * 4
    assert left + size <= int(PATCH_BANDS[0] * width)
    assert np.array_equal(last, image[:size, left : left + size])
    assert data.fingerprint == load_patches_rgb().fingerprint  # deterministic


def test_png_grid_is_rgb_for_three_channels_and_grayscale_for_one():
    x = np.zeros((2, 2 * 2 * 3), np.float32)
    x[0, 0] = 3  # image 0, pixel (0, 0): red only
    x[1, 3 * 3 + 2] = 3  # image 1, pixel (1, 1): blue only
    img = Image.open(io.BytesIO(png_grid(x, (2, 2, 3), high=3, scale=1, pad=1)))
    assert img.mode == "RGB"
    px = np.asarray(img)
    assert tuple(px[1, 1]) == (255, 0, 0)  # first image starts after the 1-pixel pad
    assert tuple(px[2, 5]) == (0, 0, 255)  # second image: columns 4-5, its pixel (1, 1)
    gray = Image.open(io.BytesIO(png_grid(np.full((1, 4), 3.0), [2, 2], high=3, scale=1)))
    assert gray.mode == "L"


def test_the_conv_denoiser_on_one_channel_is_the_map_it_was():
    """(h, w, 1) through the channels-last code: the same numbers as the one-channel layout that
    digits models were trained with (stack of z and features, head's outputs last)."""
    import torch
    import torch.nn.functional as F

    from plugins.common.blocks import fourier
    from plugins.diffusion.model import ConvDenoiser

    torch.manual_seed(0)
    net = ConvDenoiser((4, 5, 1), out=3, channels=16, blocks=1, dropout=0.0).eval()
    torch.nn.init.normal_(net.head.weight)  # zero-initialised: give it something to show
    z, features, gamma = torch.randn(6, 20), torch.randn(6, 20), torch.rand(6, 1)
    with torch.no_grad():
        h = net.inp(torch.stack([z, features], 1).reshape(-1, 2, 4, 5))
        e = net.time(fourier(gamma, net.embed))
        for block in net.blocks:
            h = block(h, e)
        before = net.head(F.silu(net.norm(h))).permute(0, 2, 3, 1).reshape(-1, 20, 3)
        # the same numbers up to float rounding (the permuted layout may sum in another order)
        assert torch.allclose(net(z, features, gamma), before, rtol=1e-5, atol=1e-5)


def test_the_conv_denoiser_keeps_each_colour_value_at_its_place():
    """With 3 channels, value d of a row (pixel d // 3, channel d % 3) gets its own numbers: a
    network whose head reads one input plane maps a change of one value to that value only."""
    import torch

    from plugins.diffusion.model import ConvDenoiser

    net = ConvDenoiser((3, 3, 3), out=1, channels=8, blocks=0, dropout=0.0).eval()
    with torch.no_grad():
        # inp copies plane k (z's channel k) to hidden channel k; the head reads hidden k for
        # output channel k; GroupNorm and SiLU are per position and channel-group affine: use
        # a 1x1 identity path by zeroing all but the centre taps.
        net.inp.weight.zero_()
        net.inp.bias.zero_()
        net.head.weight.zero_()
        net.head.bias.zero_()
        for k in range(3):
            net.inp.weight[k, k, 1, 1] = 1.0
            net.head.weight[k, k, 1, 1] = 1.0
        net.norm = torch.nn.Identity()
        z = torch.zeros(1, 27)
        base = net(z, torch.zeros(1, 27), torch.zeros(1, 1))
        for d in (0, 4, 13, 26):
            bumped = z.clone()
            bumped[0, d] = 1.0
            changed = (net(bumped, torch.zeros(1, 27), torch.zeros(1, 1)) - base).abs().reshape(-1) > 1e-6
            assert changed.nonzero().reshape(-1).tolist() == [d]


def test_the_unet_uses_the_resolutions_an_image_halves_to():
    import torch

    from plugins.diffusion.model import UNetDenoiser, unet_levels

    assert unet_levels((32, 32, 3), 3) == 3
    assert unet_levels((12, 8, 3), 4) == 3  # 12x8 -> 6x4 -> 3x2, then 3 is odd
    assert unet_levels((5, 5, 1), 3) == 1
    for shape, patch in (((12, 8, 3), 1), ((5, 5, 1), 1), ((8, 8, 3), 2)):
        net = UNetDenoiser(shape, out=2, channels=8, mults=(1, 2, 2), blocks=1, dropout=0.0, patch=patch)
        dim = shape[0] * shape[1] * shape[2]
        out = net(torch.randn(3, dim), torch.randn(3, dim), torch.rand(3, 1))
        assert out.shape == (3, dim, 2)


def test_colour_images_at_256_levels_train_export_and_score_through_the_diffusion_unet(train_model, tmp_path):
    """16x16x3 at 256 levels takes the image-scale defaults: the U-Net and the Gaussian guess on
    the lattice (a categorical a value over 256 levels would not fit); its graphs match torch."""
    stack = _stack(n=120, shape=(16, 16, 3), levels=256)
    np.save(tmp_path / "rgb.npy", stack)
    stored = train_model("diffusion", str(tmp_path / "rgb.npy"), 1, channels=8, name="diffusion-rgb")
    assert stored.data["image_shape"] == [16, 16, 3]
    config = stored.meta["config"]
    assert (config["network"], config["predict"], config["mults"]) == ("unet", "gaussian", [1, 2, 2])
    assert stored.meta["parity"]["scorer:bound"] < 1e-2  # the ONNX graphs are the torch model
    assert stored.meta["parity"]["sampler_far_share"] <= 1e-3  # none more than a level apart
    bpd = stored.metrics["test"]["bits_per_dim"]
    assert np.isfinite(bpd) and bpd > 0


@pytest.mark.slow
def test_a_colour_model_states_its_shape_and_draws_rgb_grids_over_http(train_model, tmp_path):
    """A server of its own: the shared one's fuzzers meet the models they were written for."""
    import httpx
    from servers import running_server

    np.save(tmp_path / "rgb.npy", _stack(n=300, shape=(4, 4, 3)))
    train_model("categorical", str(tmp_path / "rgb.npy"), name="categorical-rgb")
    train_model("categorical", "digits", name="gray-digits")
    env = {"GENREG_MODELS": "categorical-rgb,gray-digits", "GENREG_POLL_SECONDS": "0"}
    with (
        running_server(tmp_path / "server.log", **env) as srv,
        httpx.Client(base_url=srv.base, timeout=30) as client,
    ):
        _colour_checks(client)


def _colour_checks(client) -> None:
    import base64

    info = {m["name"]: m for m in client.get("/models").json()["models"]}["categorical-rgb"]
    assert info["image_shape"] == [4, 4, 3] and info["data"]["dim"] == 48
    assert {m["name"]: m for m in client.get("/models").json()["models"]}["gray-digits"]["image_shape"] == [
        8,
        8,
        1,
    ]
    meta = client.get("/v2/models/categorical-rgb").json()
    assert meta["parameters"]["image_shape"] == "4,4,3"
    resp = client.post("/sample", json={"model": "categorical-rgb", "n": 4, "seed": 0, "format": "png"})
    assert resp.status_code == 200, resp.text
    grid = Image.open(io.BytesIO(base64.b64decode(resp.json()["png"])))
    assert grid.mode == "RGB" and grid.size == (4 * (2 * 5 + 1), 4 * (2 * 5 + 1))  # 2x2 images, scale 4
    # The grid shows the samples drawn with that seed, each pixel's R, G, B from its row.
    rows = client.post("/sample", json={"model": "categorical-rgb", "n": 4, "seed": 0}).json()["samples"]
    first = np.asarray(grid)[4:20:4, 4:20:4]  # image 0's 4x4 pixels (pad 1, scale 4)
    assert np.array_equal(first, np.floor(np.asarray(rows[0]).reshape(4, 4, 3) / 3 * 255).astype(np.uint8))
    # A grayscale-width row, and values off the levels, are refused naming x.
    for x in ([[0.0] * 16], [[5.0] * 48]):
        bad = client.post("/score", json={"model": "categorical-rgb", "x": x})
        assert bad.status_code == 400 and bad.json()["field"] == "x", bad.text


def test_a_model_too_large_for_the_machine_is_refused_before_training_with_its_size(tmp_path, bentoml_home):
    """A MADE over 32x32x3 rows (the issue's OOM: killed at 24 GB in its first epoch) is refused
    at once, naming its estimated size and what it is made of; nothing is stored."""
    import os
    import subprocess
    import sys
    import time

    np.save(tmp_path / "rgb.npy", _stack(n=60, shape=(32, 32, 3), levels=256))
    env = dict(os.environ, GENREG_TRAIN_MEMORY=str(16 << 30))
    start = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "registry.cli",
        "train",
        "autoregressive",
        "--data",
        str(tmp_path / "rgb.npy"),
    ]
    done = subprocess.run(
        [*cmd, "-o", "network=made", "--name", "too-large", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "autoregressive (network=made) on 3072-value rows needs about" in done.stderr
    assert "GiB to train" in done.stderr and "of the 16.0 GiB available" in done.stderr
    assert time.monotonic() - start < 60
    assert not (bentoml_home / "models" / "too-large").exists()


def test_the_training_estimate_counts_parameters_optimiser_state_and_saved_activations():
    import torch

    from plugins.common.memory import TooLarge, check_fits, estimate_bytes

    parts = estimate_bytes(
        lambda: torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.Tanh()),
        lambda net, x: net(x).sum(),
        dim=10,
        batch=8,
        data_rows=100,
        eval_rows=50,
    )
    assert parts["data"] == 4 * 100 * 10
    assert parts["parameters"] == 4 * 4 * (10 * 5 + 5)  # weights, gradients, two AdamW moments
    # the saved inputs of the linear map (8 x 10 values) and of tanh (its 8 x 5 outputs), at least
    assert parts["activations"] >= 2 * 4 * (8 * 10 + 8 * 5)
    assert parts["evaluation"] >= 3 * 4 * 50 * 10  # the largest tensor at 50 rows: the input
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    check_fits("small", parts, available=1 << 30)
    with pytest.raises(TooLarge, match=r"small needs about 0\.0 GiB"):
        check_fits("small", parts, available=1000)
