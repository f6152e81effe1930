"""The `diffusion` family: a Gaussian diffusion whose served score is a true variational bound.

The bound is on log P(x) of the T-step ancestral sampler (T = ``bound_steps``), with a decoder
that puts probability mass on the levels of discrete data, so its bits/dim compare with the
flow's and the VAE's. One scorer call is an unbiased estimate of that bound at a few random
steps: averaging draws keeps it a bound, log mean exp would not (the scorer says so, and the
runtime refuses it). Sampling takes any step count up to T. torch is imported only when a
method that trains, evaluates or exports runs.

On labelled data it is p(x|y) with classifier-free guidance: trained with label dropout to a
null class, its scorer bounds log P(x|y) (the null label: the unconditional model's log P(x)),
and its sampler takes a guidance scale w (0: unconditional, 1: conditional, > 1: guided).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from plugins.common.family import TorchFamily
from plugins.diffusion.config import DiffusionConfig, DiffusionModel
from registry.contract.dataset import Dataset
from registry.contract.family import Capability, GraphSpec, TrainControl


class DiffusionFamily(TorchFamily):
    name = "diffusion"
    description = (
        "Gaussian diffusion (variance preserving, VDM parameterisation): the T-step variational bound "
        "with a discrete decoder on levels; samples with a chosen number of steps"
    )
    capabilities = frozenset({Capability.SAMPLE, Capability.BOUND})
    Config = DiffusionConfig
    data_parallel = True  # plugins.common.training.fit: DistributedDataParallel
    conditional = True  # labelled data: p(x|y), label dropout to a null class, a guided sampler

    def train(self, data: Dataset, config: DiffusionConfig, control: TrainControl) -> DiffusionModel:
        from plugins.diffusion.train import train_diffusion

        return train_diffusion(data, config.resolve(data), control)

    def sample(self, model: DiffusionModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        if not model.classes:
            return self._run_loop(model.net.sample, noise)
        # The label stays an integer (an embedding's index), and with the scale it is fed once
        # for the whole loop: the per-step noise alone goes through the common float32 path.
        import torch

        y, w = _labels(noise), torch.as_tensor(np.asarray(noise["guidance"], dtype=np.float32))
        drawn = {k: v for k, v in noise.items() if k not in ("y", "guidance")}
        return self._run_loop(
            lambda draws, steps: model.net.sample({**draws, "y": y, "guidance": w}, steps), drawn
        )

    def bound(self, model: DiffusionModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        if not model.classes:
            return self._run(model.net.bound, x, noise["u"], noise["eps"], noise["eps0"])
        y = _labels(noise)
        return self._run(lambda *a: model.net.bound(*a, y), x, noise["u"], noise["eps"], noise["eps0"])

    def export(self, model: DiffusionModel, directory: Path) -> list[GraphSpec]:
        from plugins.diffusion.export import export_diffusion

        return export_diffusion(model, directory)

    def weights(self, model: DiffusionModel) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in model.net.state_dict().items()}


def _labels(noise: dict[str, np.ndarray]) -> Any:
    """A conditional reference's labels (n, 1) as the int64 tensor the graph takes."""
    import torch

    return torch.as_tensor(np.asarray(noise["y"], dtype=np.int64).reshape(-1, 1))
