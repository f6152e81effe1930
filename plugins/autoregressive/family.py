"""The `autoregressive` family: an exact log-likelihood, and sampling one dimension per step.

On discrete data log P(x) is the exact probability mass (no dequantisation gap), so its
bits/dim compare directly with the other families' bounds. torch is imported only when a
method that trains, evaluates or exports runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plugins.autoregressive.config import ARConfig, ARModel
from plugins.common.family import TorchFamily
from registry.contract.dataset import Dataset
from registry.contract.family import Capability, GraphSpec, TrainControl


class AutoregressiveFamily(TorchFamily):
    name = "autoregressive"
    description = (
        "MADE or PixelCNN (PixelCNN++ on colour images): exact likelihood from softmax or "
        "discretised-logistic conditionals (Gaussian mixtures on continuous data); samples one "
        "dimension (a colour image: one pixel) per step"
    )
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB})
    Config = ARConfig
    data_parallel = True  # plugins.common.training.fit: DistributedDataParallel
    # On labelled data: p(x|y), the label embedded into every layer (plugins.autoregressive.model).
    conditional = True

    def train(self, data: Dataset, config: ARConfig, control: TrainControl) -> ARModel:
        from plugins.autoregressive.train import train_autoregressive

        return train_autoregressive(data, config.resolve(data), control)

    def sample(self, model: ARModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        # The per-step draws first: the loop's step count is read from the first array; a
        # label (n, 1) comes once for the whole loop, and the net takes it as integers.
        draws = {k: v for k, v in noise.items() if k != "y"}
        if model.classes:
            draws["y"] = np.asarray(noise["y"]).reshape(-1, 1)
        return self._run_loop(model.net.sample, draws)

    def log_prob(self, model: ARModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        if not model.classes:
            return self._run(model.net.log_prob, x)
        return self._run_labelled(model.net.log_prob, x, noise["y"])

    def export(self, model: ARModel, directory: Path) -> list[GraphSpec]:
        from plugins.autoregressive.export import export_autoregressive

        return export_autoregressive(model, directory)

    def weights(self, model: ARModel) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in model.net.state_dict().items()}
