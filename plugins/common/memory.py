"""Training memory, estimated before training starts: a model too large for the machine is
refused with its estimated size, never started and then killed.

The network is built on PyTorch's ``meta`` device (shapes, no storage) and one training loss is
run on a batch there: the parameters and buffers are counted, and every tensor autograd saves
for the backward pass is weighed as it is saved. The estimate is then

    data (train and validation rows, float32)
    + parameters x 4 (weights, gradients, AdamW's two moments) + buffers
    + the saved tensors of one batch x 2 (they, and the gradients flowing back through them)
    + an evaluation chunk (the largest saved tensor, at the evaluation rows, x 3)

against what the machine has available (``/proc/meminfo``'s MemAvailable, or
``GENREG_TRAIN_MEMORY`` bytes where set).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# The share of the available memory a training may plan to use: the allocator, Python, ONNX
# export and the evaluation's own buffers take the rest.
SHARE = 0.7


# What to change, by the part of the estimate that is largest.
ADVICE = {
    "parameters": "most of it is the network's parameters: make it narrower or shallower (options "
    "such as hidden, channels, layers or depth)",
    "activations": "most of it is one batch's activations: a smaller batch_size, or a smaller network",
    "evaluation": "most of it is the evaluation's largest tensor, which grows with the data's width and "
    "the model's outputs per value: a smaller network or output (levels, components) per value",
    "data": "most of it is the data itself: fewer or smaller rows",
}


class TooLarge(ValueError):
    """The model would not fit in the machine's memory for training (the message says by how much)."""


def available_bytes() -> int | None:
    """GENREG_TRAIN_MEMORY, else MemAvailable (Linux); None where neither is known."""
    stated = os.environ.get("GENREG_TRAIN_MEMORY")
    if stated:
        return int(stated)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_bytes(
    build: Callable[[], torch.nn.Module],
    loss: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    dim: int,
    batch: int,
    *,
    data_rows: int,
    eval_rows: int,
) -> dict[str, int]:
    """The parts of the estimate (see the module's docstring), in bytes; ``total`` their sum."""
    with torch.device("meta"):
        net = build()
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss(net, torch.zeros(batch, dim, device="meta"))
    activations = 2 * sum(saved)
    # Evaluation runs without autograd: what is alive at once is a few of its ops' outputs.
    largest = _LargestOutput()
    with torch.no_grad(), largest:
        loss(net, torch.zeros(max(1, eval_rows), dim, device="meta"))
    evaluation = 3 * largest.bytes
    parts = {
        "data": 4 * data_rows * dim,
        "parameters": 4 * params + buffers,
        "activations": activations,
        "evaluation": evaluation,
    }
    parts["total"] = sum(parts.values())
    return parts


def check_fits(what: str, parts: dict[str, int], available: int | None = None) -> None:
    """TooLarge when the estimate exceeds SHARE of the available memory, with the figures."""
    available = available_bytes() if available is None else available
    if available is None or parts["total"] <= SHARE * available:
        return
    largest = max(ADVICE, key=lambda part: parts[part])
    raise TooLarge(
        f"{what} needs about {_gib(parts['total'])} to train (parameters and optimiser state "
        f"{_gib(parts['parameters'])}, one batch's activations {_gib(parts['activations'])}, "
        f"evaluation {_gib(parts['evaluation'])}, data {_gib(parts['data'])}), over "
        f"{SHARE:.0%} of the {_gib(available)} available; {ADVICE[largest]}, or train where there "
        "is more memory"
    )


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any operation returns (on the meta device: shapes only)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.numel() * t.element_size())
        return out


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"
