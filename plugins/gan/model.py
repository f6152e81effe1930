"""Generator G(z) and discriminator D(x) = sigmoid(logit(x)) as MLPs.

Conditional (``classes``): G(z, y) takes the label as a one-hot block beside z, and D(x, y) is a
projection discriminator (Miyato & Koyama 2018): logit = psi(phi(x)) + <e_y, phi(x)>, with phi
the MLP's last hidden layer and e_y a learned vector per class, so the label asks "is this a
real y?" of features shared by every class.
"""

from __future__ import annotations

import torch
from torch import nn

from plugins.common.blocks import one_hot


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


def _needs(y: torch.Tensor | None, classes: int) -> None:
    if classes and y is None:
        raise ValueError("a conditional GAN needs a label per row")


class Generator(nn.Module):
    def __init__(
        self, latent: int, dim: int, levels: int | None, hidden: int, depth: int, classes: int = 0
    ) -> None:
        super().__init__()
        self.levels, self.classes = levels, classes
        self.net = mlp(latent + classes, hidden, dim, depth, nn.ReLU())
        self.scaler = Scaler(dim, levels)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Samples in the networks' units (what D sees during training)."""
        _needs(y, self.classes)
        out = self.net(torch.cat([z, one_hot(y, self.classes)], -1) if self.classes else z)
        return torch.sigmoid(out) if self.levels else out

    def sample(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Samples in data units; discrete data is rounded to its levels."""
        out = self.forward(z, y)
        if self.levels:
            return torch.round(out * (self.levels - 1))
        return out * self.scaler.std + self.scaler.mean


class Discriminator(nn.Module):
    def __init__(
        self,
        dim: int,
        levels: int | None,
        hidden: int,
        depth: int,
        dropout: float = 0.0,
        slope: float = 0.2,
        classes: int = 0,
    ) -> None:
        super().__init__()
        self.classes = classes
        # Dropout keeps D from memorising ~1,250 images, which starves G of gradient.
        self.net = mlp(dim, hidden, 1, depth, dropout=dropout, slope=slope)
        self.scaler = Scaler(dim, levels)
        if classes:
            # The projection's class vectors e_y, one per row of a bias-free linear map.
            self.embed = nn.Linear(classes, hidden, bias=False)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logit of D on inputs in the networks' units."""
        _needs(y, self.classes)
        if not self.classes:
            return self.net(h).squeeze(-1)
        features = self.net[:-1](h)  # phi(x): the last hidden layer
        projection = (self.embed(one_hot(y, self.classes)) * features).sum(-1)
        return self.net[-1](features).squeeze(-1) + projection

    def logit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logit of D on rows in data units (the exported discriminator)."""
        return self.forward(self.scaler.to_net(x), y)
