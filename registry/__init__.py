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

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ resolves them
    from registry.contract.dataset import DataError as DataError
    from registry.contract.dataset import Dataset as Dataset
    from registry.contract.family import Capability as Capability
    from registry.contract.family import Family as Family
    from registry.contract.family import FamilyConfig as FamilyConfig
    from registry.contract.family import GraphSpec as GraphSpec
    from registry.contract.family import NoiseInput as NoiseInput
    from registry.contract.family import StepLoop as StepLoop
    from registry.contract.family import TrainControl as TrainControl
    from registry.contract.hookspecs import hookimpl as hookimpl


def __getattr__(name: str) -> Any:
    # Only public names: Python and tools probe modules for dunders, which must not load it.
    if not name.startswith("_"):
        contract = importlib.import_module("registry.contract")
        if name in contract.__all__:
            return getattr(contract, name)
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
