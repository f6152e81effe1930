"""The diffusion family's denoising networks: (z_t, features, gamma) -> ``out`` numbers per value.

Rows are flat (channels-last for images) on the way in and out. The maths that uses these
numbers (the schedule, the denoiser's posterior, the bound, a sampling step) is in
:mod:`plugins.diffusion.process`.

A conditional network (``classes`` K) also takes the label y, an (n, 1) int64 column in 0..K,
K being the null class ("no label") of classifier-free guidance: its embedding is added to the
time embedding (as DDPM/ADM do), so one network is both eps(z_t, t, y) and eps(z_t, t, null).
Without ``classes`` a network has no label embedding at all: the unconditional weights, the
random draws of their initialisation and the graphs are those it always had.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from plugins.common.blocks import Downsample, LabelEmbedding, TimeResBlock, Upsample, fourier
from plugins.common.causal import planes


class MLPDenoiser(nn.Module):
    """(z (n, D), features (n, D), gamma (n, 1)[, y (n, 1)]) -> (n, D, out): an MLP with FiLM-free
    time input (the label's embedding added to the time's features)."""

    def __init__(
        self,
        dim: int,
        out: int,
        hidden: int,
        depth: int,
        dropout: float,
        embed: int = 32,
        classes: int | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.out, self.embed = dim, out, embed
        layers: list[nn.Module] = [nn.Linear(2 * dim + embed, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, dim * out)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # Created last, so that an unconditional network's initial weights are unchanged.
        self.label = LabelEmbedding(classes + 1, embed) if classes else None

    def forward(
        self, z: torch.Tensor, features: torch.Tensor, gamma: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = fourier(gamma, self.embed)
        if self.label is not None and y is not None:
            t = t + self.label(y)
        h = torch.cat([z, features, t], -1)
        return self.head(self.body(h)).reshape(-1, self.dim, self.out)


class _ImageDenoiser(nn.Module):
    """The row <-> plane plumbing of the convolutional denoisers: z and the features stacked as
    2c input planes; the head's c * out planes back to (n, D, out), a value's numbers from its
    own pixel and channel. Subclasses define ``body(h, e)`` at ``channels`` in and out.

    With ``patch`` p > 1 the body works at 1/p of the resolution: each p x p patch's values are
    stacked as channels on the way in (space to depth) and unstacked from the head's
    c * out * p^2 planes on the way out, so no convolution runs at full resolution."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        out: int,
        channels: int,
        embed: int,
        patch: int = 1,
        classes: int | None = None,
    ) -> None:
        super().__init__()
        if shape[0] % patch or shape[1] % patch:
            raise ValueError(f"patch {patch} does not divide the image's {shape[0]}x{shape[1]}")
        self.shape, self.out, self.embed, self.patch = shape, out, embed, patch
        self.dim = shape[0] * shape[1] * shape[2]
        self.inp = nn.Conv2d(2 * shape[2] * patch**2, channels, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(embed, embed), nn.SiLU(), nn.Linear(embed, embed))
        self.norm = nn.GroupNorm(8, channels)
        self.head = nn.Conv2d(channels, shape[2] * out * patch**2, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.classes = classes
        self.label: nn.Module | None = None  # made by the subclass after its blocks (see label_embedding)

    def label_embedding(self) -> None:
        """The label's table (K + 1 entries, the last the null class), made after the body's
        blocks: an unconditional network draws the same initial weights as it always did, and a
        conditional one those weights plus the table."""
        if self.classes:
            self.label = LabelEmbedding(self.classes + 1, self.embed)

    def body(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, z: torch.Tensor, features: torch.Tensor, gamma: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        height, width, c = self.shape
        # z's channels, then the features': with one channel this is the stack of the two.
        h = torch.cat([planes(z, self.shape), planes(features, self.shape)], 1)
        if self.patch > 1:
            h = F.pixel_unshuffle(h, self.patch)
        h = self.inp(h)  # before the embedding: the unconditional graph's order of operations
        e = self.time(fourier(gamma, self.embed))
        if self.label is not None and y is not None:
            e = e + self.label(y)
        h = self.body(h, e)
        h = self.head(F.silu(self.norm(h)))
        if self.patch > 1:
            h = F.pixel_shuffle(h, self.patch)
        h = h.reshape(-1, c, self.out, height, width)
        return h.permute(0, 3, 4, 1, 2).reshape(-1, self.dim, self.out)


class ConvDenoiser(_ImageDenoiser):
    """Residual 3x3 convolutions at full resolution, time by FiLM per block (the 8x8 default)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        out: int,
        channels: int,
        blocks: int,
        dropout: float,
        embed: int = 64,
        classes: int | None = None,
    ) -> None:
        super().__init__(shape, out, channels, embed, classes=classes)
        self.blocks = nn.ModuleList(TimeResBlock(channels, channels, embed, dropout) for _ in range(blocks))
        self.label_embedding()

    def body(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, e)
        return h


def unet_levels(shape: tuple[int, int, int], wanted: int) -> int:
    """Resolutions a U-Net can use on (h, w): each but the last halves both, so they must divide."""
    levels = 1
    while levels < wanted and shape[0] % 2**levels == 0 and shape[1] % 2**levels == 0:
        levels += 1
    return levels


class UNetDenoiser(_ImageDenoiser):
    """A U-Net: at each resolution ``blocks`` residual blocks at ``channels x mults[i]``, then a
    stride-2 convolution down; a middle block; back up through as many blocks a resolution, each
    with its mirror's output concatenated in. Fewer resolutions where the image does not halve
    (:func:`unet_levels`)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        out: int,
        channels: int,
        mults: tuple[int, ...],
        blocks: int,
        dropout: float,
        embed: int = 64,
        patch: int = 1,
        classes: int | None = None,
    ) -> None:
        super().__init__(shape, out, channels, embed, patch, classes)
        inner = (shape[0] // patch, shape[1] // patch, shape[2])
        widths = [channels * m for m in mults[: unet_levels(inner, len(mults))]]
        self.blocks, self.levels = blocks, len(widths)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, width = [], channels
        for i, w in enumerate(widths):
            for _ in range(blocks):
                self.down.append(TimeResBlock(width, w, embed, dropout))
                width = w
                skips.append(width)
            if i < self.levels - 1:
                self.downsample.append(Downsample(width))
        self.mid = TimeResBlock(width, width, embed, dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(self.levels)):
            for _ in range(blocks):
                self.up.append(TimeResBlock(width + skips.pop(), widths[i], embed, dropout))
                width = widths[i]
            if i > 0:
                self.upsample.append(Upsample(width, widths[i - 1]))
                width = widths[i - 1]
        self.out_conv = nn.Conv2d(width, channels, 1) if width != channels else nn.Identity()
        self.label_embedding()

    def body(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        kept = []
        down, up = iter(self.down), iter(self.up)
        for i in range(self.levels):
            for _ in range(self.blocks):
                h = next(down)(h, e)
                kept.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
        h = self.mid(h, e)
        for i in reversed(range(self.levels)):
            for _ in range(self.blocks):
                h = next(up)(torch.cat([h, kept.pop()], 1), e)
            if i > 0:
                h = self.upsample[self.levels - 1 - i](h)
        return self.out_conv(h)
