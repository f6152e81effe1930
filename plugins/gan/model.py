"""Generator G(z) and discriminator D(x) = sigmoid(logit(x)) as MLPs."""

from __future__ import annotations

import torch
from torch import nn


def mlp(
    inp: int,
    hidden: int,
    out: int,
    depth: int,
    act: nn.Module | None = None,
    dropout: float = 0.0,
    slope: float = 0.2,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = inp
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), act if act is not None else nn.LeakyReLU(slope)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


class Scaler(nn.Module):
    """Data units <-> the networks' units: [0, 1] for discrete levels, standardised otherwise."""

    def __init__(self, dim: int, levels: int | None) -> None:
        super().__init__()
        self.levels = levels
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        if self.levels:
            return x / (self.levels - 1)
        return (x - self.mean) / self.std


class Generator(nn.Module):
    def __init__(self, latent: int, dim: int, levels: int | None, hidden: int, depth: int) -> None:
        super().__init__()
        self.levels = levels
        self.net = mlp(latent, hidden, dim, depth, nn.ReLU())
        self.scaler = Scaler(dim, levels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Samples in the networks' units (what D sees during training)."""
        out = self.net(z)
        return torch.sigmoid(out) if self.levels else out

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Samples in data units; discrete data is rounded to its levels."""
        y = self.forward(z)
        if self.levels:
            return torch.round(y * (self.levels - 1))
        return y * self.scaler.std + self.scaler.mean


class Discriminator(nn.Module):
    def __init__(
        self, dim: int, levels: int | None, hidden: int, depth: int, dropout: float = 0.0, slope: float = 0.2
    ) -> None:
        super().__init__()
        # Dropout keeps D from memorising ~1,250 images, which starves G of gradient.
        self.net = mlp(dim, hidden, 1, depth, dropout=dropout, slope=slope)
        self.scaler = Scaler(dim, levels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logit of D on inputs in the networks' units."""
        return self.net(h).squeeze(-1)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of D on rows in data units (the exported discriminator)."""
        return self.forward(self.scaler.to_net(x))
