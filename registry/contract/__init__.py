"""The plugin contract: the hooks a plugin implements, the Family it registers, the data it trains
on, and how plugins are found and checked. Imports only the runtime's graph description below it."""

from registry.contract.dataset import DataError, Dataset
from registry.contract.family import (
    Capability,
    Family,
    FamilyConfig,
    GraphSpec,
    LatentPart,
    NoiseInput,
    StepLoop,
    TrainControl,
)
from registry.contract.hookspecs import hookimpl

__all__ = [
    "Capability",
    "DataError",
    "Dataset",
    "Family",
    "FamilyConfig",
    "GraphSpec",
    "LatentPart",
    "NoiseInput",
    "StepLoop",
    "TrainControl",
    "hookimpl",
]
