"""The VAE decoder's likelihoods p(x|z): what the network's per-value outputs mean.

The decoder network answers ``per`` numbers for each value of a row, (n, D, per); a likelihood
turns them into a distribution over that value (the values are independent given z):

- :class:`Categorical`: a softmax over the levels (per = levels). Exact for few levels (digits'
  17); at 256 levels x 3,072 values it is 786k logits a row.
- :class:`Logistic`: a mixture of K discretised logistics over the levels (per = 2K, plus K
  weights when K > 1), a location and a log-scale each. The end levels take the tails, so
  p(x|z) sums to 1 over the levels, and the log-likelihood evaluates each value's mass at its
  observed level only: no level-wide tensor in training or scoring.
- :class:`Gaussian`: continuous data, a mean and a log-variance (per = 2).

Each gives ``log_likelihood`` (summed over the row), ``mean`` (what the decoder-mean graph
serves) and ``sample`` from explicit uniform (or normal) noise. The categorical and the Gaussian
also give ``table``, the decoder-params graph (per-level log-probabilities (n, D, L), or [means,
log-variances]); the logistic has none, as its table would be L times the scorer's work and
size (786k numbers a row at 32x32x3), so the evaluation's ELBO surgery takes log p(x|z) from
the scorer instead (registry.pipeline.surgery).

``centre`` and ``scale`` (per value, data units) are the data's normalisation: the raw outputs
are about unit size, so a location is ``centre + raw * scale``.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch.nn import functional as F

from plugins.common.logistic import choose_component, log_mass, sample_level

LOG_2PI = math.log(2 * math.pi)

Params = tuple[torch.Tensor, ...]


def normal_log_density(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z | mean, exp(log_var)) per value (broadcasting)."""
    return -0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * torch.exp(-log_var))


def normal_log_pdf(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension of log N(z | mean, exp(log_var))."""
    return normal_log_density(z, mean, log_var).sum(-1)


class Likelihood(Protocol):
    per: int

    def split(self, raw: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> Params: ...
    def log_likelihood(self, x: torch.Tensor, params: Params) -> torch.Tensor: ...
    def mean(self, params: Params) -> torch.Tensor: ...
    def sample(self, params: Params, u: torch.Tensor) -> torch.Tensor: ...


class Categorical:
    """A softmax over ``levels`` per value."""

    def __init__(self, levels: int) -> None:
        self.levels = self.per = levels

    def split(self, raw: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> Params:
        return (F.log_softmax(raw, dim=-1),)

    def _levels(self, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.levels, dtype=like.dtype, device=like.device)

    def log_likelihood(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        one_hot = (x.unsqueeze(-1) == self._levels(x)).to(params[0].dtype)
        return (one_hot * params[0]).sum((-1, -2))

    def mean(self, params: Params) -> torch.Tensor:
        """The expected level."""
        return (torch.exp(params[0]) * self._levels(params[0])).sum(-1)

    def sample(self, params: Params, u: torch.Tensor) -> torch.Tensor:
        """The level whose CDF interval holds uniform u."""
        cdf = torch.cumsum(torch.exp(params[0]), -1)[..., :-1]
        return (u.unsqueeze(-1) >= cdf).to(torch.float32).sum(-1)

    def table(self, params: Params) -> torch.Tensor:
        return params[0]


class Gaussian:
    """A normal per value, in data units."""

    per = 2

    def split(self, raw: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> Params:
        mean, log_var = raw[..., 0], raw[..., 1]
        return mean * scale + centre, torch.clamp(log_var, -10.0, 6.0) + 2 * torch.log(scale)

    def log_likelihood(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return normal_log_pdf(x, *params)

    def mean(self, params: Params) -> torch.Tensor:
        return params[0]

    def sample(self, params: Params, u: torch.Tensor) -> torch.Tensor:
        """mean + sd * u for standard normal u."""
        return params[0] + torch.exp(0.5 * params[1]) * u

    def table(self, params: Params) -> torch.Tensor:
        return torch.cat(params, -1)


class Logistic:
    """A mixture of ``components`` discretised logistics over ``levels`` per value."""

    # Log-scales (level units) stay within [e^-5, e^7]: a twentieth of a level to far wider than
    # 256 levels; a narrower one puts all its mass in one bin anyway and its gradient vanishes.
    LOG_SCALE = (-5.0, 7.0)

    def __init__(self, levels: int, components: int = 1) -> None:
        self.levels, self.components = levels, components
        self.per = 2 * components + (components if components > 1 else 0)

    def split(self, raw: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> Params:
        """(log weights, locations, log-scales), each (n, D, K), in level units."""
        k = self.components
        loc = centre[..., None] + raw[..., :k] * scale[..., None]
        log_scale = torch.clamp(raw[..., k : 2 * k] + torch.log(scale)[..., None], *self.LOG_SCALE)
        if k == 1:
            log_w = torch.zeros_like(loc)
        else:
            log_w = F.log_softmax(raw[..., 2 * k :], dim=-1)
        return log_w, loc, log_scale

    def log_likelihood(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        log_w, loc, log_scale = params
        mass = log_mass(x[..., None], loc, log_scale, self.levels)  # (n, D, K): the observed level's
        per_value = mass[..., 0] if self.components == 1 else torch.logsumexp(log_w + mass, -1)
        return per_value.sum(-1)

    def mean(self, params: Params) -> torch.Tensor:
        """The (weighted) location clipped to the levels' range: one logistic's median level
        before rounding. Unrounded, as the categorical's expected level is: a location within
        float error of a bin's edge rounds differently in ONNX Runtime and PyTorch (a whole
        level; measured on patches-rgb, export refused)."""
        log_w, loc, _ = params
        centre = loc[..., 0] if self.components == 1 else (torch.exp(log_w) * loc).sum(-1)
        return torch.clamp(centre, 0.0, self.levels - 1.0)

    def sample(self, params: Params, u: torch.Tensor) -> torch.Tensor:
        """One uniform u per value draws both the component and the level (choose_component)."""
        log_w, loc, log_scale = params
        if self.components == 1:
            return sample_level(u, loc[..., 0], log_scale[..., 0], self.levels)
        k, inner = choose_component(log_w, u)
        pick = lambda t: torch.gather(t, -1, k)[..., 0]  # noqa: E731
        return sample_level(inner, pick(loc), pick(log_scale), self.levels)
