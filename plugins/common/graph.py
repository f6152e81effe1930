"""One function of a family's modules, as a module to export: the graph is the function.

The older graphs each have a small wrapper class whose forward calls one method; a new graph
needs none: ``Traced(fn, net=module)`` exports ``fn``, and the family's reference calls the
same ``fn``, so the graph and its parity reference cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


class Traced(nn.Module):
    """``forward(*inputs) = fn(*inputs)``; ``modules`` (those ``fn`` uses) are registered, so
    that ``eval()`` reaches them and the exporter sees their weights."""

    def __init__(self, fn: Callable[..., Any], **modules: nn.Module) -> None:
        super().__init__()
        self.used = nn.ModuleDict(modules)
        self.fn = fn

    def forward(self, *inputs: Any) -> Any:
        return self.fn(*inputs)
