"""Variational dequantisation (Ho et al., 2019, "Flow++"): a learned noise distribution q(u|x).

u = sigmoid(g(eps; x)) with eps ~ N(0, I) and g a conditional coupling flow, so u lies in the
open unit cube and

    log q(u|x) = log N(eps) - log|det dg/deps| - sum_i log(s_i (1 - s_i)),   s = sigmoid(g).

With it, log P(x) >= E_q[log p(x + u) - log q(u|x)], which is tighter than the uniform bound
(q = U[0,1)^D is one choice of q) when q is trained jointly with p.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from plugins.common.invertible import squeeze, to_image, to_rows, unsqueeze
from plugins.flow.model import Coupling, conditioner, conv_conditioner

LOG_2PI = math.log(2 * math.pi)
# A logistic variable, sigmoid of which is uniform, has std pi / sqrt(3) ~ 1.8: starting eps at
# that scale starts q close to the uniform dequantiser.
INITIAL_LOG_SCALE = math.log(math.pi / math.sqrt(3))


class VariationalDequantizer(nn.Module):
    """q(u|x) for discrete x in {0, ..., levels - 1}^dim.

    On a flat row the networks are MLPs. With an ``image_shape`` (the multi-scale flow's
    dequantiser, Flow++'s convolutional q(u|x)) x and eps are squeezed once (4c channels at half
    the height and width), the features of x are a convolutional map of that size, and each
    coupling's convolutional conditioner reads it beside the half it keeps.
    """

    def __init__(
        self,
        dim: int,
        levels: int,
        *,
        hidden: int,
        n_blocks: int,
        transform: str = "affine",
        bins: int = 8,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.levels = levels
        self.image_shape = None if image_shape is None else tuple(image_shape)
        conv = image_shape is not None
        width = 4 * image_shape[2] if conv else dim  # values per position the couplings see
        if conv:
            self.features = nn.Sequential(
                nn.Conv2d(width, hidden, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.GELU(),
            )
            self.base = conv_conditioner(hidden, 2 * width, hidden, 0.0)
        else:
            # Features of x shared by every step; the last layer is a plain linear map.
            self.features = nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
            )
            self.base = conditioner(hidden, 2 * dim, hidden, 1, 0.0)
        with torch.no_grad():
            self.base[-1].bias[width:] = INITIAL_LOG_SCALE
        self.couplings = nn.ModuleList(
            Coupling(
                width,
                hidden,
                1,
                0.0,
                2.0,
                transform=transform,
                bins=bins,
                tail_bound=6.0,
                context=hidden,
                flip=bool(i % 2),
                conv=conv,
            )
            for i in range(n_blocks)
        )

    def _shaped(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.image_shape is None else squeeze(to_image(rows, self.image_shape))

    def _flat(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.image_shape is None else to_rows(unsqueeze(v))

    def _context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx = self.features(self._shaped(x / (self.levels - 1) - 0.5))
        shift, raw = self.base(ctx).chunk(2, dim=1)
        log_scale = 4.0 * torch.tanh(raw / 4.0)
        return ctx, shift, log_scale

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, log q(u|x)) for one draw eps ~ N(0, I) per row."""
        ctx, shift, log_scale = self._context(x)
        v = self._shaped(eps) * torch.exp(log_scale) + shift
        log_det = log_scale.flatten(1).sum(1)
        for coupling in self.couplings:
            v, ld = coupling(v, ctx)
            log_det = log_det + ld
        v = self._flat(v)
        log_sigmoid_jac = (F.logsigmoid(v) + F.logsigmoid(-v)).sum(1)
        log_normal = -0.5 * (eps * eps).sum(1) - 0.5 * self.dim * LOG_2PI
        return torch.sigmoid(v), log_normal - log_det - log_sigmoid_jac

    def log_density(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log q(u|x) at given u in (0, 1)^dim, by inverting the flow (tests and diagnostics)."""
        ctx, shift, log_scale = self._context(x)
        h = self._shaped(torch.log(u) - torch.log1p(-u))
        for coupling in reversed(self.couplings):
            h = coupling.inverse(h, ctx)
        eps = self._flat((h - shift) * torch.exp(-log_scale))
        # Re-run forward for its log-determinant at this eps: simpler than inverse log-dets.
        return self.forward(x, eps)[1]


def variational_log_weight(
    flow: nn.Module,
    dequantizer: VariationalDequantizer,
    x: torch.Tensor,
    eps: torch.Tensor,
    label: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(x + u) - log q(u|x) with u = h(eps; x): one draw of the variational bound (of
    log p(x|label) for a conditional flow; q is q(u|x) either way, a valid choice of q)."""
    u, log_q = dequantizer(x, eps)
    return flow.log_prob(x + u, label) - log_q
