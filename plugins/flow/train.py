"""Training the flow: maximum likelihood on continuous data; on discrete data, the
dequantisation bound with uniform noise or with a learned q(u|x) trained jointly. On labelled
data the flow is p(x|y) (the dequantiser stays q(u|x): any q gives a bound, and one shared by
the classes cancels from their comparison when they are scored on the same draws)."""

from __future__ import annotations

import math

import torch
from torch import nn

from plugins.common.training import fit_config, pick_device, split_labels, with_labels
from plugins.flow.config import FlowConfig, FlowModel
from plugins.flow.dequantize import VariationalDequantizer, variational_log_weight
from plugins.flow.model import Flow
from plugins.flow.multiscale import MultiScaleFlow
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl


def build_flow(data: Dataset, config: FlowConfig, seed: int) -> nn.Module:
    """The network a resolved config names: the flat coupling flow, or the multi-scale one."""
    common = {
        "n_blocks": config.n_blocks,
        "hidden": config.hidden,
        "dropout": config.dropout,
        "clamp": config.clamp,
        "alpha": config.alpha,
        "seed": seed,
        "transform": config.coupling,
        "bins": config.bins,
        "tail_bound": config.tail_bound,
        "classes": data.classes,
    }
    if config.arch == "multiscale":
        return MultiScaleFlow(data.image_shape, data.levels, scales=config.scales, **common)
    return Flow(data.dim, data.levels, depth=config.depth, **common)


def train_flow(data: Dataset, config: FlowConfig, control: TrainControl) -> FlowModel:
    variational = config.dequantization == "variational"
    if variational and not data.discrete:
        raise ValueError(
            "dequantization=variational applies to discrete data only; "
            f"{data.name!r} is continuous (its score is an exact log_prob)"
        )
    device = pick_device(control)
    torch.manual_seed(control.seed)
    flow = build_flow(data, config, control.seed)
    dequantizer = (
        VariationalDequantizer(
            data.dim,
            data.levels,
            hidden=config.dequant_hidden,
            n_blocks=config.dequant_blocks,
            transform=config.coupling,
            bins=config.bins,
            image_shape=data.image_shape if config.arch == "multiscale" else None,
        )
        if variational
        else None
    )
    # One module, so the optimiser, gradient clipping and best-state checkpoint cover both.
    module = nn.ModuleDict({"flow": flow} | ({"dequantizer": dequantizer} if dequantizer else {}))
    train = torch.as_tensor(data.train, dtype=torch.float32)
    if not data.discrete:
        flow.pre.mean.copy_(train.mean(0))
        flow.pre.std.copy_(train.std(0) + 1e-6)
    module.to(device)
    val = torch.as_tensor(data.validation, dtype=torch.float32)
    dim = data.dim
    if data.labels is not None:
        # Each row's label rides as one more column, so every batch (and every data-parallel
        # rank's share of it) keeps its rows' labels; log_weight splits it off again.
        train = with_labels(train, data.labels["train"])
        val = with_labels(val, data.labels["validation"])
    train, val = train.to(device), val.to(device)
    nats_to_bpd = 1.0 / (data.dim * math.log(2))

    def log_weight(rows: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        batch, label = split_labels(rows, dim)
        if dequantizer is not None:
            return variational_log_weight(flow, dequantizer, batch, noise, label)
        if data.discrete:
            return flow.log_prob(batch + noise, label)
        return flow.log_prob(batch, label)

    def draw(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        shape = torch.Size([shape[0], dim])  # the data's columns, not a label's
        if dequantizer is not None:
            return torch.randn(shape, generator=generator).to(device)
        return torch.rand(shape, generator=generator).to(device)

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return -log_weight(batch, draw(batch.shape, generator)).mean() * nats_to_bpd

    # A fixed noise draw per validation row keeps successive epochs comparable.
    val_noise = draw(val.shape, torch.Generator().manual_seed(control.seed + 1))

    def validate() -> float:
        with torch.no_grad():
            out = [log_weight(val[i : i + 4096], val_noise[i : i + 4096]) for i in range(0, len(val), 4096)]
            return float(-torch.cat(out).mean() * nats_to_bpd)

    # float32 training even on a GPU: the objective is a change of variables, and bf16 rounding
    # of the 1x1 convolutions' weights would apply a map other than the one whose log-determinant
    # (from the float32 LU factors) the loss counts.
    result = fit_config(
        module, train, config, loss_fn=loss_fn, validate=validate, control=control, mixed_precision=False
    )
    module.cpu().eval()
    flow.freeze_inverse()
    return FlowModel(
        config,
        flow,
        data.dim,
        data.levels,
        fit=result.__dict__,
        dequantizer=dequantizer,
        classes=data.classes,
    )
