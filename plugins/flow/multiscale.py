"""A multi-scale flow on images (RealNVP, Dinh et al. 2017; Glow, Kingma and Dhariwal 2018).

x -> preprocess (as the flat flow: dequantised levels to logits) -> image (c, h, w), then at each
of ``scales`` scales: squeeze (4c, h/2, w/2), ``n_blocks`` steps of [actnorm, invertible 1x1
convolution, coupling with a convolutional conditioner], and, except at the last scale, a
factor-out: half the channels leave the flow as latents. The factored half is first transformed
by an affine coupling on the half that stays (Glow's learned split prior, written as one more
coupling), so its latent is standard normal like the rest and sampling inverts the same maps.

The latent z is a flat vector of the data's size: the factored-out halves, scale by scale, then
the last scale's output, each flattened channels-last. Same interface as the flat
:class:`plugins.flow.model.Flow` (log_prob, sample, transform, invert, freeze_inverse, ``pre``),
so training, export and the family use either. Conditional on a class label: the label's
embedding enters every coupling's conditioner as constant feature maps, and the base Gaussian
has a mean and a scale per class, as in the flat flow.
"""

from __future__ import annotations

import torch
from torch import nn

from plugins.common.blocks import LabelEmbedding
from plugins.common.invertible import ActNorm, InvertibleLinear, squeeze, to_image, to_rows, unsqueeze
from plugins.flow.model import LABEL_WIDTH, Coupling, LatentFlow, Preprocess


def max_scales(shape: tuple[int, int, int]) -> int:
    """Scales an image of this shape can take: each squeeze halves the height and width."""
    height, width, _ = shape
    scales = 0
    while height % 2 == 0 and width % 2 == 0 and scales < 6:
        height, width, scales = height // 2, width // 2, scales + 1
    return scales


class MultiScaleFlow(LatentFlow):
    def __init__(
        self,
        shape: tuple[int, int, int],
        levels: int | None,
        *,
        scales: int,
        n_blocks: int,
        hidden: int,
        dropout: float,
        clamp: float,
        alpha: float,
        seed: int,
        transform: str = "affine",
        bins: int = 8,
        tail_bound: float = 4.0,
        classes: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= scales <= max_scales(shape):
            raise ValueError(
                f"scales={scales}: a {shape[0]}x{shape[1]} image can be squeezed "
                f"{max_scales(shape)} times (each squeeze halves height and width)"
            )
        self.shape = tuple(shape)
        self.dim = shape[0] * shape[1] * shape[2]
        self.classes = classes
        generator = torch.Generator().manual_seed(seed)
        self.pre = Preprocess(self.dim, levels, alpha)
        context = LABEL_WIDTH if classes else 0
        coupling = {
            "hidden": hidden,
            "depth": 1,
            "dropout": dropout,
            "clamp": clamp,
            "bins": bins,
            "tail_bound": tail_bound,
            "context": context,
            "conv": True,
        }
        channels = shape[2]
        self.stages = nn.ModuleList()
        self.splits = nn.ModuleList()
        for scale in range(scales):
            channels *= 4
            steps: list[nn.Module] = []
            for _ in range(n_blocks):
                steps += [
                    ActNorm(channels),
                    InvertibleLinear(channels, generator),
                    Coupling(channels, transform=transform, **coupling),
                ]
            self.stages.append(nn.ModuleList(steps))
            if scale < scales - 1:
                # Keeps the first half, transforms the second: the second half is factored out.
                self.splits.append(Coupling(channels, transform="affine", **coupling))
                channels -= channels // 2
        if classes:
            self.label = LabelEmbedding(classes, LABEL_WIDTH)
            self.base = LabelEmbedding(classes, 2 * self.dim)
            nn.init.zeros_(self.base.table.weight)

    def _forward(
        self, y: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, log_det = self.pre(y)
        h = to_image(h, self.shape)
        context = None if label is None else self.label(label)
        latents: list[torch.Tensor] = []
        for scale, steps in enumerate(self.stages):
            h = squeeze(h)
            for step in steps:
                h, ld = step(h, context) if isinstance(step, Coupling) else step(h)
                log_det = log_det + ld
            if scale < len(self.splits):
                h, ld = self.splits[scale](h, context)
                log_det = log_det + ld
                keep = h.shape[1] - h.shape[1] // 2
                latents.append(to_rows(h[:, keep:]))
                h = h[:, :keep]
        latents.append(to_rows(h))
        return torch.cat(latents, 1), log_det

    def _inverse(self, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """h (before the data's preprocessing) from the flat latent z."""
        # The sizes of the factored-out parts and of the last scale's output, from the shape.
        height, width, channels = self.shape
        sizes: list[tuple[int, int, int]] = []
        for scale in range(len(self.stages)):
            height, width, channels = height // 2, width // 2, channels * 4
            if scale < len(self.splits):
                sizes.append((height, width, channels // 2))
                channels -= channels // 2
        sizes.append((height, width, channels))
        parts = torch.split(z, [a * b * c for a, b, c in sizes], dim=1)
        h = to_image(parts[-1], sizes[-1])
        for scale in reversed(range(len(self.stages))):
            if scale < len(self.splits):
                h = torch.cat([h, to_image(parts[scale], sizes[scale])], 1)
                h = self.splits[scale].inverse(h, context)
            for step in reversed(self.stages[scale]):
                h = step.inverse(h, context) if isinstance(step, Coupling) else step.inverse(h)
            h = unsqueeze(h)
        return to_rows(h)
