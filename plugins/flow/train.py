"""Training the flow: maximum likelihood on dequantised (discrete) or raw (continuous) data."""

from __future__ import annotations

import math

import torch

from plugins.common.training import fit_config, pick_device
from plugins.flow.family import FlowConfig, FlowModel
from plugins.flow.model import Flow
from registry.data import Dataset
from registry.family import TrainControl


def train_flow(data: Dataset, config: FlowConfig, control: TrainControl) -> FlowModel:
    device = pick_device(control)
    torch.manual_seed(control.seed)
    flow = Flow(
        data.dim,
        data.levels,
        n_blocks=config.n_blocks,
        hidden=config.hidden,
        depth=config.depth,
        dropout=config.dropout,
        clamp=config.clamp,
        alpha=config.alpha,
        seed=control.seed,
    )
    train = torch.as_tensor(data.train, dtype=torch.float32)
    if not data.discrete:
        flow.pre.mean.copy_(train.mean(0))
        flow.pre.std.copy_(train.std(0) + 1e-6)
    flow.to(device)
    train = train.to(device)
    val = torch.as_tensor(data.validation, dtype=torch.float32, device=device)
    nats_to_bpd = 1.0 / (data.dim * math.log(2))

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if data.discrete:
            u = torch.rand(batch.shape, generator=generator).to(device)
            batch = batch + u
        return -flow.log_prob(batch).mean() * nats_to_bpd

    val_gen = torch.Generator().manual_seed(control.seed + 1)
    # A fixed uniform draw per validation row keeps successive epochs comparable.
    val_u = torch.rand(val.shape, generator=val_gen).to(device) if data.discrete else None

    def validate() -> float:
        with torch.no_grad():
            y = val + val_u if val_u is not None else val
            out = []
            for i in range(0, len(y), 4096):
                out.append(flow.log_prob(y[i : i + 4096]))
            return float(-torch.cat(out).mean() * nats_to_bpd)

    result = fit_config(flow, train, config, loss_fn=loss_fn, validate=validate, control=control)
    flow.cpu().eval()
    flow.freeze_inverse()
    return FlowModel(config, flow, data.dim, data.levels, fit=result.__dict__)
