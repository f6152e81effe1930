"""The `flow` family: exact log-likelihood on continuous data, a dequantisation bound on discrete.

torch is imported only when a method that trains, evaluates or exports runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plugins.common.family import TorchFamily
from plugins.flow.config import FlowConfig, FlowModel
from registry.contract.dataset import Dataset
from registry.contract.family import Capability, GraphSpec, TrainControl


class FlowFamily(TorchFamily):
    name = "flow"
    description = (
        "RealNVP/Glow coupling flow: affine or spline couplings, actnorm, LU-parametrised mixing; "
        "uniform or variational dequantisation"
    )
    capabilities = frozenset(
        {Capability.SAMPLE, Capability.LOG_PROB, Capability.BOUND, Capability.ENCODE, Capability.DECODE}
    )
    Config = FlowConfig
    data_parallel = True  # plugins.common.training.fit: DistributedDataParallel
    # On labelled data: p(x|y), the label in every coupling and a per-class base Gaussian. Such
    # a model neither encodes nor decodes (model_capabilities): its latent depends on y.
    conditional = True

    def train(self, data: Dataset, config: FlowConfig, control: TrainControl) -> FlowModel:
        from plugins.flow.train import train_flow

        return train_flow(data, config.resolve(data), control)

    def model_capabilities(self, model: FlowModel) -> set[Capability]:
        score = Capability.BOUND if model.levels else Capability.LOG_PROB
        if model.classes:
            # The honest option: the runtime's encoder and decoder take no label, and a
            # conditional flow's z = f(x; y) means nothing without one, so none is claimed.
            return {Capability.SAMPLE, score}
        return {Capability.SAMPLE, score, Capability.ENCODE, Capability.DECODE}

    def sample(self, model: FlowModel, noise: dict[str, np.ndarray]) -> np.ndarray:
        if model.classes:
            return self._run_labelled(model.flow.sample, noise["z"], noise["y"])
        return self._run(model.flow.sample, noise["z"])

    def log_prob(self, model: FlowModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        if model.levels:
            raise ValueError("a flow on discrete data has a bound, not an exact log_prob")
        if model.classes:
            return self._run_labelled(model.flow.log_prob, x, noise["y"])
        return self._run(model.flow.log_prob, x)

    def bound(self, model: FlowModel, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        # One log importance weight per row: log p(x + u) with u ~ U[0,1)^D, or
        # log p(x + u) - log q(u|x) with u = h(eps; x) ~ q; its mean over draws is the bound.
        if model.classes:
            from plugins.flow.export import conditional_functions

            name = "u" if model.dequantizer is None else "eps"
            return self._run_labelled(conditional_functions(model)["scorer"], x, noise[name], noise["y"])
        if model.dequantizer is None:
            return self._run(lambda a, u: model.flow.log_prob(a + u), x, noise["u"])
        from plugins.flow.dequantize import variational_log_weight

        return self._run(
            lambda a, eps: variational_log_weight(model.flow, model.dequantizer, a, eps), x, noise["eps"]
        )

    def reference(self, model: FlowModel, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        from plugins.flow.export import latent_functions

        return self._reference_of(latent_functions(model), spec, feeds)

    def export(self, model: FlowModel, directory: Path) -> list[GraphSpec]:
        from plugins.flow.export import export_flow

        return export_flow(model, directory)

    def weights(self, model: FlowModel) -> dict[str, np.ndarray]:
        out = {k: v.detach().cpu().numpy() for k, v in model.flow.state_dict().items()}
        if model.dequantizer is not None:
            out |= {
                f"dequantizer.{k}": v.detach().cpu().numpy()
                for k, v in model.dequantizer.state_dict().items()
            }
        return out
