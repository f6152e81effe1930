"""RealNVP/Glow-style coupling flow in PyTorch.

Every log-determinant is computed in closed form so the forward (scoring) pass exports to
ONNX without linalg ops; the inverse (sampling) pass uses matrices inverted once, outside
the graph, by :meth:`Flow.freeze_inverse`.

Conditional on a class label (``classes``; the reference is normflows' ClassCondFlow, and
Glow's class-conditional prior): every coupling's conditioner takes a learned label embedding
beside the half it keeps, and the base is a Gaussian with a mean and a scale per class,
N(mu_y, diag(sigma_y^2)), so log p(x|y) is exact through the change of variables as before.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from plugins.common.blocks import LabelEmbedding
from plugins.common.invertible import ActNorm, InvertibleLinear
from plugins.flow.spline import UNIT_DERIVATIVE_LOGIT, spline_forward, spline_inverse

LOG_2PI = math.log(2 * math.pi)
# Width of a conditional flow's label embedding, the couplings' extra input: at least as many
# dimensions as classes lets each coupling's first layer give every class its own bias.
LABEL_WIDTH = 32


def conditioner(n_in: int, n_out: int, hidden: int, depth: int, dropout: float) -> nn.Sequential:
    """An MLP whose last layer starts at zero, so a fresh coupling is (close to) the identity."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    last = nn.Linear(width, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


def conv_conditioner(n_in: int, n_out: int, hidden: int, dropout: float) -> nn.Sequential:
    """Glow's convolutional conditioner: 3x3, 1x1, then a 3x3 that starts at zero (a fresh
    coupling is the identity), so each pixel's parameters see its 5x5 neighbourhood."""
    layers: list[nn.Module] = [
        nn.Conv2d(n_in, hidden, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.GELU(),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    last = nn.Conv2d(hidden, n_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class Coupling(nn.Module):
    """Transforms one half of the vector elementwise, with parameters computed from the other
    half (and from an optional context vector, for conditional flows).

    ``transform="affine"``: a scale and shift; the log-scale is soft-clamped to [-clamp, clamp]
    because unbounded scales are what make affine couplings diverge to NaN on 2-D toys at
    ordinary learning rates. ``transform="spline"``: a monotone rational-quadratic spline with
    ``bins`` bins on [-tail_bound, tail_bound], the identity outside (plugins.flow.spline).
    ``flip`` swaps which half is changed, for flows with no mixing layer in between.

    ``conv``: the input is an image (n, c, h, w), split by channels, and the conditioner is
    convolutional (:func:`conv_conditioner`); a context is then either a vector per row (a
    label's embedding, the same at every pixel) or a feature map of the image's size.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        depth: int,
        dropout: float,
        clamp: float,
        *,
        transform: str = "affine",
        bins: int = 8,
        tail_bound: float = 4.0,
        context: int = 0,
        flip: bool = False,
        conv: bool = False,
    ) -> None:
        super().__init__()
        first = dim // 2
        self.flip = flip
        self.d_keep = dim - first if flip else first
        self.d_change = dim - self.d_keep
        self.transform = transform
        self.clamp = clamp
        self.bins = bins
        self.tail_bound = tail_bound
        per_dim = 2 if transform == "affine" else 3 * bins - 1
        self.conv = conv
        self.net = (
            conv_conditioner(self.d_keep + context, self.d_change * per_dim, hidden, dropout)
            if conv
            else conditioner(self.d_keep + context, self.d_change * per_dim, hidden, depth, dropout)
        )
        if transform == "spline":
            # End derivatives fixed at 1 and inner ones starting at 1: a fresh spline is the identity.
            with torch.no_grad():
                bias = self.net[-1].bias.view(self.d_change, per_dim)
                bias[:, 2 * bins :] = UNIT_DERIVATIVE_LOGIT

    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flip:
            return h[:, self.d_change :], h[:, : self.d_change]
        return h[:, : self.d_keep], h[:, self.d_keep :]

    def _join(self, keep: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        return torch.cat([change, keep] if self.flip else [keep, change], dim=1)

    def _params(self, keep: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Each changed value's parameters on the last axis: (n, d_change[, h, w], per value)."""
        if context is not None and keep.dim() == 4 and context.dim() == 2:
            context = context[:, :, None, None].expand(-1, -1, keep.shape[2], keep.shape[3])
        inputs = keep if context is None else torch.cat([keep, context], dim=1)
        out = self.net(inputs)
        if not self.conv:
            return out.view(keep.shape[0], self.d_change, -1)
        n, _, height, width = out.shape
        return out.view(n, self.d_change, -1, height, width).permute(0, 1, 3, 4, 2)

    def _affine(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale = self.clamp * torch.tanh(params[..., 0] / self.clamp)
        return log_scale, params[..., 1]

    def forward(
        self, h: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep, change = self._split(h)
        params = self._params(keep, context)
        if self.transform == "affine":
            log_scale, shift = self._affine(params)
            return self._join(keep, change * torch.exp(log_scale) + shift), log_scale.flatten(1).sum(1)
        change, log_det = spline_forward(change, params, self.tail_bound)
        return self._join(keep, change), log_det.flatten(1).sum(1)

    def inverse(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        keep, change = self._split(h)
        params = self._params(keep, context)
        if self.transform == "affine":
            log_scale, shift = self._affine(params)
            return self._join(keep, (change - shift) * torch.exp(-log_scale))
        return self._join(keep, spline_inverse(change, params, self.tail_bound))


class Preprocess(nn.Module):
    """Maps data units to an unbounded space, with its log-determinant.

    Discrete data with ``levels`` L: y = (x + u) / L in [0, 1), s = a + (1 - 2a) y, h = logit(s).
    The constant ``a`` keeps the logit away from the infinite ends of [0, 1]. Continuous data
    is standardised with the training mean and std.
    """

    def __init__(self, dim: int, levels: int | None, alpha: float) -> None:
        super().__init__()
        self.levels = levels
        self.alpha = alpha
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.levels is None:
            h = (y - self.mean) / self.std
            return h, (-torch.log(self.std)).sum().expand(y.shape[0])
        a = self.alpha
        s = a + (1 - 2 * a) * (y / self.levels)
        h = torch.log(s) - torch.log1p(-s)
        log_det = math.log(1 - 2 * a) - math.log(self.levels) - torch.log(s) - torch.log1p(-s)
        return h, log_det.sum(1)

    def inverse(self, h: torch.Tensor, lattice: bool = True) -> torch.Tensor:
        """Data units from h: for discrete data the level whose unit bin holds y (``lattice``),
        or y itself, the dequantised value x + u (the exact inverse)."""
        if self.levels is None:
            return h * self.std + self.mean
        s = torch.sigmoid(h)
        y = (s - self.alpha) / (1 - 2 * self.alpha) * self.levels
        if not lattice:
            return y
        return torch.clamp(torch.floor(y), 0, self.levels - 1)


class LatentFlow(nn.Module):
    """What every flow here computes from its two maps: ``_forward(y, label) -> (z, log-det)``
    (preprocessing included) and ``_inverse(z, context) -> h`` (before the preprocessing's
    inverse), over a standard normal base, or for a conditional flow (``self.base``, a
    :class:`LabelEmbedding` of 2 x dim) a Gaussian with a mean and a scale per class."""

    dim: int
    pre: Preprocess

    def _forward(
        self, y: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _inverse(self, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _base(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-scale) of class ``label``'s base Gaussian, (n, dim) each."""
        return self.base(label).chunk(2, dim=1)

    def log_prob(self, y: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Log-density of y (dequantised x for discrete data), in nats per row; given the
        (n, 1) class ``label`` of a conditional flow, log p(y|label)."""
        z, log_det = self._forward(y, label)
        if label is None:
            log_base = -0.5 * (z * z).sum(1) - 0.5 * self.dim * LOG_2PI
        else:
            mean, log_scale = self._base(label)
            s = (z - mean) * torch.exp(-log_scale)
            log_base = -0.5 * (s * s).sum(1) - log_scale.sum(1) - 0.5 * self.dim * LOG_2PI
        return log_base + log_det

    def transform(self, y: torch.Tensor) -> torch.Tensor:
        """z = f(y), the latent of y (dequantised x for discrete data)."""
        return self._forward(y)[0]

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        """y = f^-1(z) exactly (no rounding to the lattice); :meth:`freeze_inverse` first."""
        return self.pre.inverse(self._inverse(z, None), lattice=False)

    def freeze_inverse(self) -> None:
        for module in self.modules():
            if isinstance(module, InvertibleLinear):
                module.freeze_inverse()

    def sample(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Maps standard normal noise to data units (of class ``label``, (n, 1), for a
        conditional flow); call :meth:`freeze_inverse` after training first."""
        context = None
        if label is not None:
            mean, log_scale = self._base(label)
            z, context = mean + torch.exp(log_scale) * z, self.label(label)
        return self.pre.inverse(self._inverse(z, context))


class Flow(LatentFlow):
    """x -> h (preprocess) -> [ActNorm, InvertibleLinear, Coupling] * K -> z ~ N(0, I)."""

    def __init__(
        self,
        dim: int,
        levels: int | None,
        *,
        n_blocks: int,
        hidden: int,
        depth: int,
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
        self.dim = dim
        self.classes = classes
        generator = torch.Generator().manual_seed(seed)
        self.pre = Preprocess(dim, levels, alpha)
        context = LABEL_WIDTH if classes else 0
        steps: list[nn.Module] = []
        for _ in range(n_blocks):
            steps += [
                ActNorm(dim),
                InvertibleLinear(dim, generator),
                Coupling(
                    dim,
                    hidden,
                    depth,
                    dropout,
                    clamp,
                    transform=transform,
                    bins=bins,
                    tail_bound=tail_bound,
                    context=context,
                ),
            ]
        self.steps = nn.ModuleList(steps)
        if classes:  # created last: an unconditional flow's initialisation stays as it was
            self.label = LabelEmbedding(classes, LABEL_WIDTH)
            # Each class's base mean and log-scale, starting at N(0, I).
            self.base = LabelEmbedding(classes, 2 * dim)
            nn.init.zeros_(self.base.table.weight)

    def _forward(
        self, y: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, log_det = self.pre(y)
        context = None if label is None else self.label(label)
        for step in self.steps:
            h, ld = step(h, context) if context is not None and isinstance(step, Coupling) else step(h)
            log_det = log_det + ld
        return h, log_det

    def _inverse(self, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """h (before the data's preprocessing) from the latent z, the steps in reverse."""
        h = z
        for step in reversed(self.steps):
            h = (
                step.inverse(h, context)
                if context is not None and isinstance(step, Coupling)
                else step.inverse(h)
            )
        return h
