"""genreg's core, in subpackages by concern (bottom to top; each imports only those below it):

- ``registry.runtime``: the serving runtime (store, ONNX Runtime sessions, scoring, row checks);
  the Bento ships this folder whole, and it never imports torch;
- ``registry.contract``: the plugin contract (hooks, Family, Dataset, plugin loading);
- ``registry.datasets``: built-in data sets and user files;
- ``registry.pipeline``: training, export, parity, evaluation, critic, report;
- ``registry.packaging``: the Bento, the container image, the demo;
- ``registry.cli``: the ``genreg`` command.

Plugin authors import the contract from here (``from registry import Family, hookimpl``). The
names resolve on first use, so that importing the runtime alone (as the service does) does not
load the contract.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.contract import (
        Capability,
        DataError,
        Dataset,
        Family,
        FamilyConfig,
        GraphSpec,
        NoiseInput,
        TrainControl,
        hookimpl,
    )

__all__ = [
    "Capability",
    "DataError",
    "Dataset",
    "Family",
    "FamilyConfig",
    "GraphSpec",
    "NoiseInput",
    "TrainControl",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("registry.contract"), name)
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
