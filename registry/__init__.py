"""genreg's core: the plugin contract, datasets and the model store (no torch needed)."""

from registry.family import (
    Capability,
    Family,
    FamilyConfig,
    GraphSpec,
    NoiseInput,
    TrainControl,
)
from registry.hookspecs import hookimpl

__all__ = [
    "Capability",
    "Family",
    "FamilyConfig",
    "GraphSpec",
    "NoiseInput",
    "TrainControl",
    "hookimpl",
]
