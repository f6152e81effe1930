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

    @staticmethod
    def _run_loop(fn: Callable[..., Any], noise: dict[str, np.ndarray]) -> np.ndarray:
        """A step sampler's PyTorch reference ``fn(draws, steps)`` on the runtime's noise (every
        step's draws, (steps, n, dim) each): float32 in, float64 out, no grad."""
        import torch

        with torch.no_grad():
            draws = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in noise.items()}
            return fn(draws, len(next(iter(draws.values())))).double().numpy()
