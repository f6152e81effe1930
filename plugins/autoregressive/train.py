"""Training the autoregressive model: maximum likelihood (exact), early-stopped on validation."""

from __future__ import annotations

import math

import torch

from plugins.autoregressive.config import ARConfig, ARModel
from plugins.autoregressive.model import (
    MADE,
    Autoregressive,
    Categorical,
    DiscretizedLogistic,
    GaussianMixture,
    PixelCNN,
)
from plugins.autoregressive.pixel_mixture import PixelLogisticMixture
from plugins.autoregressive.pixelcnnpp import PixelAutoregressive, PixelCNNpp
from plugins.common.memory import check_fits, estimate_bytes
from plugins.common.training import fit_config, pick_device, split_labels, with_labels
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl
from registry.runtime.images import image_shape

EVAL_ROWS = 4096  # validation rows scored at once


def build(
    dim: int,
    levels: int | None,
    config: ARConfig,
    shape: tuple[int, ...] | None = None,
    classes: int | None = None,
) -> Autoregressive | PixelAutoregressive:
    """The network for the config; ``classes``: conditional on that many class labels."""
    shape = image_shape(shape)  # (h, w), as stored before channels, is one channel
    if config.network == "conv" and shape is not None and shape[2] > 1:
        if not levels or config.conditional != "logistic":
            raise ValueError(
                f"network=conv on {shape[2]}-channel images models each pixel with a discretised "
                "logistic mixture over its channels (PixelCNN++): it needs discrete levels and "
                "conditional=logistic"
            )
        mixture = PixelLogisticMixture(levels, shape[2], config.components)
        network = PixelCNNpp(
            shape, levels, mixture.params, config.channels, config.layers, config.dropout, classes
        )
        return PixelAutoregressive(network, mixture)
    if levels:
        conditional = (
            Categorical(levels)
            if config.conditional == "softmax"
            else DiscretizedLogistic(levels, config.components)
        )
    else:
        conditional = GaussianMixture(config.components)
    if config.network == "conv":
        if shape is None:
            raise ValueError("network=conv needs image data (an image shape); use network=made")
        network = PixelCNN(
            shape[:2], conditional.params, config.channels, config.layers, config.dropout, classes
        )
    else:
        network = MADE(dim, conditional.params, config.hidden, config.depth, config.dropout, classes)
    return Autoregressive(network, conditional, levels)


def train_autoregressive(data: Dataset, config: ARConfig, control: TrainControl) -> ARModel:
    check_fits(
        f"autoregressive (network={config.network}) on {data.dim}-value rows",
        estimate_bytes(
            lambda: build(data.dim, data.levels, config, data.image_shape),
            lambda net, x: net.log_prob(x).mean(),
            data.dim,
            config.batch_size,
            data_rows=len(data.train) + len(data.validation),
            eval_rows=min(EVAL_ROWS, len(data.validation)),
        ),
    )
    device = pick_device(control)
    torch.manual_seed(control.seed)
    classes = data.classes
    net = build(data.dim, data.levels, config, data.image_shape, classes)
    train = torch.as_tensor(data.train, dtype=torch.float32)
    if isinstance(net, Autoregressive):  # PixelCNN++ scales its input to [-1, 1] itself
        net.network.mean.copy_(train.mean(0))
        net.network.std.copy_(train.std(0) + (0.5 if data.levels else 1e-3))
    net.to(device)
    val = torch.as_tensor(data.validation, dtype=torch.float32)
    if data.labels is not None:
        # Each row's label rides as one more column, so every batch (and every data-parallel
        # rank's share of it) keeps its rows' labels; log_prob splits it off again.
        train = with_labels(train, data.labels["train"])
        val = with_labels(val, data.labels["validation"])
    train, val = train.to(device), val.to(device)
    nats_to_bpd = 1.0 / (data.dim * math.log(2))
    dim = data.dim

    def log_prob(rows: torch.Tensor) -> torch.Tensor:
        x, y = split_labels(rows, dim)
        return net.log_prob(x) if y is None else net.log_prob(x, y)

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return -log_prob(batch).mean() * nats_to_bpd

    def validate() -> float:
        with torch.no_grad():
            out = [log_prob(val[i : i + EVAL_ROWS]) for i in range(0, len(val), EVAL_ROWS)]
            return float(-torch.cat(out).mean() * nats_to_bpd)

    result = fit_config(net, train, config, loss_fn=loss_fn, validate=validate, control=control)
    net.cpu().eval()
    return ARModel(
        config,
        net,
        data.dim,
        data.levels,
        fit=result.__dict__,
        image_shape=data.image_shape,
        classes=classes,
    )
