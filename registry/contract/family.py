"""The Family contract: what a model family plugin provides, and its capabilities as data."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from pydantic import BaseModel, ConfigDict

from registry.runtime.graphs import Condition, GraphSpec, LatentPart, NoiseInput, StepLoop

if TYPE_CHECKING:
    from registry.contract.dataset import Dataset

__all__ = [
    "Capability",
    "Condition",
    "Family",
    "FamilyConfig",
    "GraphSpec",
    "LatentPart",
    "NoiseInput",
    "StepLoop",
    "TrainControl",
]


class Capability(enum.StrEnum):
    """What a family (and each model it trains) can do."""

    SAMPLE = "sample"
    LOG_PROB = "log_prob"  # exact, normalised log-likelihood
    BOUND = "bound"  # a lower bound on the log-likelihood (ELBO, dequantisation bound)
    DISCRIMINATE = "discriminate"  # probability that a row is real
    ENCODE = "encode"  # rows to latents: an encoder graph (GraphSpec kinds gaussian or exact)
    DECODE = "decode"  # latents to rows: decoder graphs (kinds mean and sample, or exact)


# Which Family method each capability obliges the family to implement.
CAPABILITY_METHODS: dict[Capability, str] = {
    Capability.SAMPLE: "sample",
    Capability.LOG_PROB: "log_prob",
    Capability.BOUND: "bound",
    Capability.DISCRIMINATE: "discriminate",
    # The latent-space graphs are checked against the family's reference for each of them.
    Capability.ENCODE: "reference",
    Capability.DECODE: "reference",
}


class FamilyConfig(BaseModel):
    """Base for a family's options (set with ``-o key=value``); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def with_defaults(self, preset: dict[str, Any]) -> Self:
        """A copy whose unset (None) options take the preset's values; set ones are kept."""
        return self.model_copy(update={k: v for k, v in preset.items() if getattr(self, k) is None})


@dataclass
class TrainControl:
    """How long and how reproducibly to train; shared by every family."""

    seed: int = 0
    epochs: int | None = None
    time_budget: float | None = None
    device: str = "cpu"
    # The training loss's arithmetic: auto (bf16 autocast on a GPU, float32 on the CPU),
    # float32 or bf16; validation, export and every served number stay float32 whatever it is.
    precision: str = "auto"
    progress: bool = True
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)


class Family:
    """A model family. Subclass it, set the class attributes, implement what you claim.

    ``train`` returns a family-specific trained model object that the other methods take.
    Reference methods take the noise explicitly (as the exported graphs do) so that ONNX
    parity can be checked row for row. Every score is in nats per row.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    Config: ClassVar[type[FamilyConfig]] = FamilyConfig
    # True when ``train`` runs data-parallel inside a torch.distributed group (genreg train
    # --nproc N): every rank trains on its share of each batch and the gradients are averaged.
    # A family whose training does not do that trains in one process; --nproc is refused.
    data_parallel: ClassVar[bool] = False
    # True when ``train`` on labelled data (``data.labels``) fits p(x|y): its sampler and scorer
    # graphs then take the label as a ``GraphSpec.condition`` input, and the reference methods
    # find it (and a guided sampler's scale) in ``noise`` under the condition's input names.
    conditional: ClassVar[bool] = False

    def train(self, data: Dataset, config: FamilyConfig, control: TrainControl) -> Any:
        """Fit the family to ``data.train`` (validate on ``data.validation``)."""
        raise NotImplementedError

    def model_capabilities(self, model: Any) -> set[Capability]:
        """The capabilities of one trained model (e.g. a flow gives a bound on discrete data)."""
        return set(self.capabilities)

    def sample(self, model: Any, noise: dict[str, np.ndarray]) -> np.ndarray:
        """Map explicit noise inputs to samples in data units.

        For a sampler exported as a step loop (``GraphSpec.loop``) each noise array carries
        every step's draw, shape (steps, n, dim): the reference runs the whole loop. A
        conditional graph's label (an (n, 1) int64 column) and guidance scale come in ``noise``
        too, once for the whole loop.
        """
        raise NotImplementedError

    def log_prob(self, model: Any, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        """Exact log-likelihood per row, in nats."""
        raise NotImplementedError

    def bound(self, model: Any, x: np.ndarray, noise: dict[str, np.ndarray]) -> np.ndarray:
        """A lower bound on the log-likelihood per row, in nats."""
        raise NotImplementedError

    def discriminate(
        self, model: Any, x: np.ndarray, condition: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """Logit that each row is real data (a conditional discriminator's label in ``condition``)."""
        raise NotImplementedError

    def reference(self, model: Any, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Reference output of an auxiliary graph (encoder, decoder) for the parity check: ``feeds``
        are the graph's inputs (its ``x_input`` and noise), the answer its output."""
        raise NotImplementedError

    def export(self, model: Any, directory: Path) -> list[GraphSpec]:
        """Write ONNX graphs into ``directory`` and describe them."""
        raise NotImplementedError

    def weights(self, model: Any) -> dict[str, np.ndarray]:
        """Named arrays that fully describe the trained model (stored as .npz, no pickle)."""
        return {}

    def config_of(self, model: Any) -> FamilyConfig:
        """The config the model was trained with."""
        return model.config


def implements(family: type[Family], method: str) -> bool:
    """Whether ``family`` overrides ``method`` of the base contract."""
    return getattr(family, method, None) is not getattr(Family, method)
