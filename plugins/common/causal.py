"""Causal image convolutions (PixelCNN++'s shifted convolutions) and the one row <-> plane helper.

Rows are flat and channels-last (a pixel's channels adjacent); a network works on planes
(n, c, h, w). :func:`planes` converts.

A *down-shifted* convolution sees, at (i, j), input rows i - kh + 1 .. i and the columns around j;
a *down-right-shifted* one sees rows i - kh + 1 .. i and columns j - kw + 1 .. j. Stacked after an
initial shift (:func:`down_shift`, :func:`right_shift`), they give the two streams of PixelCNN++
(Salimans et al., 2017): one that sees every row above a pixel and one that also sees the pixels
to its left in its row, with no blind spot and never the pixel itself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def planes(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(n, h*w*c) channels-last rows -> (n, c, h, w)."""
    h, w, c = shape
    return x.reshape(-1, h, w, c).permute(0, 3, 1, 2)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Row i takes row i - 1's values (row 0 zeros): a pixel then sees only the rows above it."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Column j takes column j - 1's values (column 0 zeros)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(nn.Conv2d):
    """Output (i, j) sees input rows i - kh + 1 .. i and columns j - kw // 2 .. j + kw // 2."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (2, 3)) -> None:
        super().__init__(cin, cout, kernel)
        kh, kw = kernel
        self.pad = (kw // 2, kw // 2, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class DownRightShiftedConv2d(nn.Conv2d):
    """Output (i, j) sees input rows i - kh + 1 .. i and columns j - kw + 1 .. j."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int] = (2, 2)) -> None:
        super().__init__(cin, cout, kernel)
        kh, kw = kernel
        self.pad = (kw - 1, 0, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class GatedResidual(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv(elu(conv(elu(x)) + nin(elu(aux)))): PixelCNN++'s block.

    ``conv`` is a causal convolution class; ``aux`` (optional) is a stream that is causal for
    the same pixel (the row stream feeding the row-and-left stream); ``cond`` (optional, (n,
    2 x channels)) a per-channel bias on [a, b] before the gate, the same at every pixel (a
    class label's embedding, as PixelCNN++'s conditioning h)."""

    def __init__(self, channels: int, conv: type[nn.Conv2d], aux: bool, dropout: float) -> None:
        super().__init__()
        self.first = conv(channels, channels)
        self.aux = nn.Conv2d(channels, channels, 1) if aux else None
        self.drop = nn.Dropout(dropout)
        self.second = conv(channels, 2 * channels)

    def forward(
        self, x: torch.Tensor, aux: torch.Tensor | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.first(F.elu(x))
        if self.aux is not None and aux is not None:
            h = h + self.aux(F.elu(aux))
        gates = self.second(self.drop(F.elu(h)))
        if cond is not None:
            gates = gates + cond[:, :, None, None]
        a, b = gates.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)
