"""Image blocks shared by the families' networks: a time embedding, residual convolutions that take
it, down- and up-sampling, and a class label's inputs (an embedding, a one-hot). Each family's
``model.py`` composes them; the maths of a family
(a schedule, a bound, a likelihood) stays in its own modules."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def fourier(gamma: torch.Tensor, width: int) -> torch.Tensor:
    """(n, 1) log-SNR (or any time) -> (n, width) sines and cosines at geometric frequencies."""
    half = width // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(64.0), half, device=gamma.device))
    angle = gamma / 16.0 * freqs[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], -1)


def groups(channels: int) -> int:
    """GroupNorm's groups: 8 where they divide the channels, else the largest divisor below."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class TimeResBlock(nn.Module):
    """h + conv(silu(FiLM_e(norm(conv(silu(norm(h))))))): two 3x3 convolutions, the embedding ``e``
    as a per-channel scale and shift between them; a 1x1 skip where the channels change."""

    def __init__(self, cin: int, cout: int, embed: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(embed, 2 * cout)
        self.norm2 = nn.GroupNorm(groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        a = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        a = self.norm2(a) * (1 + scale) + shift
        return (h if self.skip is None else self.skip(h)) + self.conv2(self.drop(F.silu(a)))


class Downsample(nn.Module):
    """Half the height and width: a 3x3 convolution of stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    """Twice the height and width, from ``cin`` to ``cout`` channels: a 2x2 transposed convolution
    of stride 2 (each input pixel paints its own 2x2 block, so no checkerboard). Measured against
    nearest neighbours then a 3x3 convolution, which runs at the larger size: a 32x32x3 U-Net
    trained at ~2x the images per second."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


class LabelEmbedding(nn.Module):
    """A learned vector per class label: (n, 1) int64 labels -> (n, width).

    ``classes`` counts every label the network takes (a null class for classifier-free
    guidance is one more). The families add it (or slices of it) to their hidden layers'
    pre-activations, so the label reaches every layer of a conditional network.
    """

    def __init__(self, classes: int, width: int) -> None:
        super().__init__()
        self.table = nn.Embedding(classes, width)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y.reshape(-1).long())


def one_hot(y: torch.Tensor, classes: int) -> torch.Tensor:
    """(n, 1) int64 labels -> (n, classes) float one-hot (a comparison: exports as ONNX Equal)."""
    return (y.reshape(-1, 1) == torch.arange(classes, device=y.device)).to(torch.float32)
