"""A Family base for the PyTorch-trained built-ins (imports torch only when a method runs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from registry.contract.family import Family, GraphSpec


class TorchFamily(Family):
    """Adds ``_run``: call a torch function on numpy inputs (float32 in, float64 out, no grad)."""

    @staticmethod
    def _run(fn: Callable[..., Any], *arrays: np.ndarray) -> np.ndarray:
        from plugins.common.training import run_numpy

        return run_numpy(fn, *arrays)

    @classmethod
    def _run_labelled(cls, fn: Callable[..., Any], *arrays: np.ndarray) -> np.ndarray:
        """``_run`` where the last array is a conditional graph's (n, 1) label column: it goes
        to ``fn`` as int64, as the graph takes it, not as float32."""
        import torch

        *rest, y = arrays
        labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
        return cls._run(lambda *a: fn(*a, labels), *rest)

    @classmethod
    def _reference_of(
        cls,
        functions: dict[tuple[str, str], Callable[..., Any]],
        spec: GraphSpec,
        feeds: dict[str, np.ndarray],
    ) -> np.ndarray:
        """An auxiliary graph's reference: the function its export traced (``functions``, by role
        and kind), on the graph's own inputs, its x_input and then its noise."""
        fn = functions[spec.role, spec.kind or ""]
        return cls._run(fn, feeds[spec.x_input or "x"], *(feeds[n.name] for n in spec.noise))

    @staticmethod
    def _run_loop(fn: Callable[..., Any], noise: dict[str, np.ndarray]) -> np.ndarray:
        """A step sampler's PyTorch reference ``fn(draws, steps)`` on the runtime's noise (every
        step's draws, (steps, n, dim) each): float32 in, float64 out, no grad."""
        import torch

        with torch.no_grad():
            draws = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in noise.items()}
            return fn(draws, len(next(iter(draws.values())))).double().numpy()
