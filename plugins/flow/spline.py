"""Rational-quadratic spline transforms (Durkan et al., 2019, "Neural Spline Flows").

Each dimension is mapped by a monotone piecewise rational-quadratic function on
[-bound, bound] with K bins, and by the identity outside it (linear tails; the end
derivatives are fixed at 1 so the map is smooth at the bounds).

Written to export to ONNX: the bin is found by summing comparisons against the knots and
read with ``gather``; values outside the interval are handled with ``where``. No boolean-mask
indexing and no ``searchsorted``.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(c) + MIN_DERIVATIVE = 1: the boundary derivative that matches the identity tails.
UNIT_DERIVATIVE_LOGIT = math.log(math.expm1(1 - MIN_DERIVATIVE))


def _knots(logits: torch.Tensor, bound: float, minimum: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin sizes, knot positions with both ends) from unnormalised logits over K bins."""
    k = logits.shape[-1]
    sizes = minimum + (1 - minimum * k) * torch.softmax(logits, dim=-1)
    knots = F.pad(torch.cumsum(sizes, dim=-1), (1, 0)) * (2 * bound) - bound
    # Exact ends: the cumulative sum may miss 1 by a rounding error.
    knots = torch.cat(
        [torch.full_like(knots[..., :1], -bound), knots[..., 1:-1], torch.full_like(knots[..., :1], bound)],
        -1,
    )
    return knots[..., 1:] - knots[..., :-1], knots


def _pick(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(table, -1, index.unsqueeze(-1)).squeeze(-1)


def _bin_index(value: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Index of the bin holding ``value``: the number of interior knots at or below it."""
    interior = knots[..., 1:-1]
    return (value.unsqueeze(-1) >= interior).to(torch.int64).sum(-1)


def _parameters(
    params: torch.Tensor, bound: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split (..., 3K - 1) raw parameters into widths, x-knots, heights, y-knots, derivatives."""
    k = (params.shape[-1] + 1) // 3
    widths, x_knots = _knots(params[..., :k], bound, MIN_BIN_WIDTH)
    heights, y_knots = _knots(params[..., k : 2 * k], bound, MIN_BIN_HEIGHT)
    inner = MIN_DERIVATIVE + F.softplus(params[..., 2 * k :])
    ends = torch.full_like(inner[..., :1], 1.0)
    derivatives = torch.cat([ends, inner, ends], dim=-1)
    return widths, x_knots, heights, y_knots, derivatives


def _locate(
    value: torch.Tensor, params: torch.Tensor, bound: float, *, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """(inside the interval, clamped value, the bin's x0, width, y0, height, d0, d1).

    The bin is found on the x-knots going forward and on the y-knots going back.
    """
    widths, x_knots, heights, y_knots, derivatives = _parameters(params, bound)
    inside = (value >= -bound) & (value <= bound)
    clamped = torch.clamp(value, -bound, bound)
    idx = _bin_index(clamped, y_knots if inverse else x_knots)
    picked = (x_knots, widths, y_knots, heights, derivatives)
    x0, w, y0, h, d0 = (_pick(t, idx) for t in picked)
    return inside, clamped, (x0, w, y0, h, d0, _pick(derivatives, idx + 1))


def spline_forward(x: torch.Tensor, params: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """y = s(x) elementwise and log|ds/dx| per element; ``params`` has shape x.shape + (3K - 1,)."""
    inside, xc, (x0, w, y0, h, d0, d1) = _locate(x, params, bound, inverse=False)
    slope = h / w
    theta = (xc - x0) / w
    mix = theta * (1 - theta)
    denominator = slope + (d0 + d1 - 2 * slope) * mix
    y = y0 + h * (slope * theta * theta + d0 * mix) / denominator
    numerator = slope * slope * (d1 * theta * theta + 2 * slope * mix + d0 * (1 - theta) ** 2)
    log_det = torch.log(numerator) - 2 * torch.log(denominator)
    return torch.where(inside, y, x), torch.where(inside, log_det, torch.zeros_like(log_det))


def spline_inverse(y: torch.Tensor, params: torch.Tensor, bound: float) -> torch.Tensor:
    """x = s^-1(y) elementwise: the root in [0, 1] of the bin's quadratic in theta."""
    inside, yc, (x0, w, y0, h, d0, d1) = _locate(y, params, bound, inverse=True)
    slope = h / w
    dy = yc - y0
    curve = d0 + d1 - 2 * slope
    a = h * (slope - d0) + dy * curve
    b = h * d0 - dy * curve
    c = -slope * dy
    disc = torch.clamp(b * b - 4 * a * c, min=0.0)
    # The numerically stable form of the root (no cancellation when a is near 0).
    theta = (2 * c) / (-b - torch.sqrt(disc))
    x = x0 + theta * w
    return torch.where(inside, x, y)
