"""PixelCNN++'s conditional for a colour pixel: a mixture of discretised logistics over its channels.

For a pixel with channels x_1..x_C (R, G, B) given the pixels before it, component k has weight
pi_k and, per channel c, a discretised logistic of scale s_kc whose mean depends linearly on the
channels already drawn within the pixel:

    m_k1 = mu_k1,  m_k2 = mu_k2 + a_k x_1,  m_k3 = mu_k3 + b_k x_1 + c_k x_2  (x centred),

so P(pixel) = sum_k pi_k prod_c DL(x_c; m_kc, s_kc) is normalised over the L^C values of the
pixel (each factor sums to 1 over its channel given the earlier ones). The log-likelihood
evaluates each bin at the observed level only: no L-way tensor in training or scoring.

Sampling draws the channels in order from their exact conditionals: channel c given x_<c is the
mixture with posterior weights pi_k prod_{c' < c} DL(x_c'; ...), over all L levels (for one
pixel, so the L-way tensor is small), by Gumbel-max as the other conditionals.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from plugins.common.logistic import log_mass


def coefficients(channels: int) -> int:
    """How many within-pixel coefficients a component has: one per (later, earlier) channel pair."""
    return channels * (channels - 1) // 2


class PixelLogisticMixture:
    """Parameters per pixel: K logits, then per channel K means, K log-scales, then the K x
    coefficients(C) within-pixel coefficients; ``params`` numbers in all."""

    def __init__(self, levels: int, channels: int, components: int) -> None:
        self.levels, self.channels, self.components = levels, channels, components
        self.params = components * (1 + 2 * channels + coefficients(channels))

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., params) -> log weights (..., K), means and log-scales (..., C, K) in level units,
        coefficients (..., pairs, K) in (-1, 1)."""
        k, c = self.components, self.channels
        head = params.shape[:-1]
        log_w = F.log_softmax(params[..., :k], dim=-1)
        rest = params[..., k:]
        mean = rest[..., : c * k].reshape(*head, c, k)
        # The network's output is about unit size; the level scale makes it so for the mean too.
        mean = (mean + 1.0) * (self.levels - 1) / 2
        log_scale = rest[..., c * k : 2 * c * k].reshape(*head, c, k)
        log_scale = (log_scale + torch.log(torch.tensor((self.levels - 1) / 2.0))).clamp(-7.0, 7.0)
        coef = torch.tanh(rest[..., 2 * c * k :].reshape(*head, coefficients(c), k))
        return log_w, mean, log_scale, coef

    def _mean(self, mean: torch.Tensor, coef: torch.Tensor, x: torch.Tensor, channel: int) -> torch.Tensor:
        """Component means (..., K) of ``channel`` given the earlier channels' values x (..., C)."""
        out = mean[..., channel, :]
        pair = channel * (channel - 1) // 2  # pairs of earlier channels come first
        middle = (self.levels - 1) / 2  # centred values: a coefficient does not move the mean level
        for earlier in range(channel):
            out = out + coef[..., pair + earlier, :] * (x[..., earlier, None] - middle)
        return out

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log P(pixel) (...,) of levels x (..., C) under params (..., params)."""
        log_w, mean, log_scale, coef = self.split(params)
        total = log_w
        for c in range(self.channels):
            m = self._mean(mean, coef, x, c)
            total = total + log_mass(x[..., c, None], m, log_scale[..., c, :], self.levels)
        return torch.logsumexp(total, dim=-1)

    def sample(self, params: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """One pixel (n, C) of levels drawn from params (n, params) with Gumbel noise (n, C x L)."""
        log_w, mean, log_scale, coef = self.split(params)
        levels = torch.arange(self.levels, dtype=params.dtype, device=params.device)[:, None]  # (L, 1)
        x = torch.zeros(params.shape[0], self.channels, dtype=params.dtype, device=params.device)
        drawn = []
        for c in range(self.channels):
            m = self._mean(mean, coef, x, c)  # (n, K)
            masses = log_mass(levels, m[:, None, :], log_scale[:, None, c, :], self.levels)  # (n, L, K)
            log_p = torch.logsumexp(log_w[:, None, :] + masses, dim=-1)  # (n, L), up to a constant
            noise = g[:, c * self.levels : (c + 1) * self.levels]
            value = torch.argmax(log_p + noise, dim=-1).to(params.dtype)
            drawn.append(value)
            x = torch.stack(drawn + [torch.zeros_like(value)] * (self.channels - c - 1), dim=-1)
            # the posterior over components given the channels drawn so far
            log_w = log_w + log_mass(value[:, None], m, log_scale[:, c, :], self.levels)
        return torch.stack(drawn, dim=-1)
