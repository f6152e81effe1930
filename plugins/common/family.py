"""A Family base for the PyTorch-trained built-ins (imports torch only when a method runs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from registry.contract.family import Family


class TorchFamily(Family):
    """Adds ``_run``: call a torch function on numpy inputs (float32 in, float64 out, no grad)."""

    @staticmethod
    def _run(fn: Callable[..., Any], *arrays: np.ndarray) -> np.ndarray:
        from plugins.common.training import run_numpy

        return run_numpy(fn, *arrays)
