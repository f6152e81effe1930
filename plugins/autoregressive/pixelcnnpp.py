"""PixelCNN++ for colour images: causal two-stream network and a per-pixel logistic mixture.

The network (Salimans et al., 2017, single scale) maps rows of (h, w, c) images to the mixture
parameters of every pixel given the pixels before it in raster order: a stream that sees the
rows above and a stream that also sees the pixels to the left (plugins.common.causal), joined by
gated residual blocks. Within a pixel the channels are ordered R, G, B by the mixture itself
(pixel_mixture): a later channel's mean depends on the earlier channels' values, so the
likelihood is exact and normalised over the pixel's L^3 values.

Sampling fills one pixel (all of its channels) per step: h x w steps of the step graph.

Conditional on a class label (``classes``): a label embedding biases the gates of every block of
both streams (PixelCNN++'s conditioning), the same at every pixel, so causality is kept.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from plugins.autoregressive.pixel_mixture import PixelLogisticMixture
from plugins.common.blocks import LabelEmbedding
from plugins.common.causal import (
    DownRightShiftedConv2d,
    DownShiftedConv2d,
    GatedResidual,
    down_shift,
    planes,
    right_shift,
)


class PixelCNNpp(nn.Module):
    """Rows (n, h*w*c) in level units -> mixture parameters (n, h*w, params), raster order."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        levels: int,
        params: int,
        channels: int,
        blocks: int,
        dropout: float,
        classes: int | None = None,
    ) -> None:
        super().__init__()
        self.shape, self.levels, self.params = shape, levels, params
        self.channels, self.classes = channels, classes
        self.pixels = shape[0] * shape[1]
        self.dim = self.pixels * shape[2]
        cin = shape[2] + 1  # and a plane of ones, which tells the zero padding from a zero value
        self.up_in = DownShiftedConv2d(cin, channels, (2, 3))
        self.left_in_up = DownShiftedConv2d(cin, channels, (1, 3))
        self.left_in = DownRightShiftedConv2d(cin, channels, (2, 1))
        self.up_blocks = nn.ModuleList(
            GatedResidual(channels, DownShiftedConv2d, False, dropout) for _ in range(blocks)
        )
        self.left_blocks = nn.ModuleList(
            GatedResidual(channels, DownRightShiftedConv2d, True, dropout) for _ in range(blocks)
        )
        self.head = nn.Conv2d(channels, params, 1)
        if classes:  # created last: an unconditional network's initialisation stays as it was
            # [a, b] gate biases of every block of the two streams
            self.label = LabelEmbedding(classes, 2 * blocks * 2 * channels)

    @property
    def reach(self) -> int:
        """Rows a pixel's parameters depend on, its own included: the stream above starts two
        rows up (the shift and a 2-row kernel), each block's two 2-row convolutions reach a row
        further each, and the last block's second convolution on the row-and-left stream,
        which takes the stream above in, one more (tests/test_pixelcnnpp.py measures it)."""
        return 4 + 2 * len(self.up_blocks)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of images, or of windows of whole image rows (fewer rows, the same width):
        causal convolutions pad only above and beside, so a window's last row has exactly
        the parameters it has in the whole image when the window spans ``reach`` rows.
        ``y``: a conditional network's (n, 1) labels."""
        _, w, c = self.shape
        p = planes(x, (x.shape[1] // (w * c), w, c)) * (2.0 / (self.levels - 1)) - 1.0
        p = torch.cat([p, torch.ones_like(p[:, :1])], 1)
        up = down_shift(self.up_in(p))
        left = down_shift(self.left_in_up(p)) + right_shift(self.left_in(p))
        if y is None:
            for up_block, left_block in zip(self.up_blocks, self.left_blocks, strict=True):
                up = up_block(up)
                left = left_block(left, up)
        else:
            e = self.label(y).reshape(-1, len(self.up_blocks), 2, 2 * self.channels)
            for i, (up_block, left_block) in enumerate(zip(self.up_blocks, self.left_blocks, strict=True)):
                up = up_block(up, cond=e[:, i, 0])
                left = left_block(left, up, cond=e[:, i, 1])
        out = self.head(F.elu(left))
        return out.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.params)


class PixelAutoregressive(nn.Module):
    """PixelCNN++ and its mixture: exact log-likelihood of rows, and one sampling step (a pixel)."""

    def __init__(self, network: PixelCNNpp, mixture: PixelLogisticMixture) -> None:
        super().__init__()
        self.network = network
        self.mixture = mixture
        self.levels = mixture.levels
        self.steps = network.pixels

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x.round().clamp(0, self.levels - 1).reshape(-1, self.network.pixels, self.network.shape[2])

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x), or log p(x|y) for a conditional network's (n, 1) labels ``y``."""
        return self.mixture.log_prob(self.network(x, y), self._pixels(x)).sum(-1)

    def step(
        self, state: torch.Tensor, step: torch.Tensor, g: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fill pixel ``step`` (all its channels) of ``state`` (levels) from its conditional
        (given the labels ``y`` of a conditional network, the same at every step)."""
        n, (h, w, c) = state.shape[0], self.network.shape
        # Only the rows the pixel can see: a window of `reach` whole rows ending at its own (or
        # the image's first rows), the same parameters as the whole image for a fraction of it.
        rows = min(h, self.network.reach)
        row = torch.div(step, w, rounding_mode="floor")  # (n, 1)
        start = torch.clamp(row - (rows - 1), min=0)
        window_rows = start + torch.arange(rows, device=state.device)[None, :]  # (n, rows)
        index = window_rows[:, :, None].expand(n, rows, w * c)
        window = torch.gather(state.reshape(n, h, w * c), 1, index).reshape(n, rows * w * c)
        local = (row - start) * w + (step - row * w)  # the pixel's index in the window
        index = local.reshape(-1, 1, 1).expand(n, 1, self.mixture.params)
        params = torch.gather(self.network(window, y), 1, index)[:, 0]  # (n, P): this pixel's
        pixel = self.mixture.sample(params, g)  # (n, C)
        current = torch.arange(self.network.pixels, device=state.device)[None, :, None] == step.reshape(
            -1, 1, 1
        )
        filled = torch.where(current, pixel[:, None, :], state.reshape(n, self.network.pixels, c))
        return filled.reshape(n, -1)

    def sample(self, noise: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
        """The PyTorch reference of the runtime's loop: ``noise["g"]`` is (steps, n, C x L);
        a conditional network's labels ``noise["y"]`` (n, 1) are fed to every step."""
        n = noise["g"].shape[1]
        y = noise["y"].long() if "y" in noise else None
        state = torch.zeros(n, self.network.dim)
        for t in range(steps):
            state = self.step(state, torch.full((n, 1), t, dtype=torch.int64), noise["g"][t], y)
        return state
