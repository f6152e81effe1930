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
)
from plugins.common.training import fit_config, pick_device
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl


def build(dim: int, levels: int | None, config: ARConfig) -> Autoregressive:
    if levels:
        conditional = (
            Categorical(levels)
            if config.conditional == "softmax"
            else DiscretizedLogistic(levels, config.components)
        )
    else:
        conditional = GaussianMixture(config.components)
    made = MADE(dim, conditional.params, config.hidden, config.depth, config.dropout)
    return Autoregressive(made, conditional, levels)


def train_autoregressive(data: Dataset, config: ARConfig, control: TrainControl) -> ARModel:
    device = pick_device(control)
    torch.manual_seed(control.seed)
    net = build(data.dim, data.levels, config)
    train = torch.as_tensor(data.train, dtype=torch.float32)
    net.made.mean.copy_(train.mean(0))
    net.made.std.copy_(train.std(0) + (0.5 if data.levels else 1e-3))
    net.to(device)
    train = train.to(device)
    val = torch.as_tensor(data.validation, dtype=torch.float32, device=device)
    nats_to_bpd = 1.0 / (data.dim * math.log(2))

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return -net.log_prob(batch).mean() * nats_to_bpd

    def validate() -> float:
        with torch.no_grad():
            out = [net.log_prob(val[i : i + 4096]) for i in range(0, len(val), 4096)]
            return float(-torch.cat(out).mean() * nats_to_bpd)

    result = fit_config(net, train, config, loss_fn=loss_fn, validate=validate, control=control)
    net.cpu().eval()
    return ARModel(config, net, data.dim, data.levels, fit=result.__dict__)
