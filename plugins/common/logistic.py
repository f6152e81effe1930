"""The discretised logistic (PixelCNN++): the mass a logistic puts on one level's bin.

Level l of 0..L-1 owns [l - 1/2, l + 1/2]; the end levels take the tails, so the masses of the
L levels sum to 1 exactly. The autoregressive family's mixtures (its per-dimension one and
PixelCNN++'s colour pixel mixture) and the VAE's image decoder evaluate it here.
"""

from __future__ import annotations

import torch


# ONNX has no Expm1, Log1p or LogSigmoid: the exporter spells them as exp(x) - 1, log(1 + x) and
# log(sigmoid(x)), which lose precision (or underflow to -inf) where the reference does not, and
# an export differed from PyTorch by 9e-3 nats. These forms are accurate in float32 as spelled.
def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.minimum(x, torch.zeros_like(x)) - torch.log(1.0 + torch.exp(-torch.abs(x)))


def log_one_minus_exp_neg(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-a)) for a > 0; a series where exp(-a) - 1 would cancel."""
    a2 = a * a
    series = torch.log(a) - a / 2 + a2 / 24 - a2 * a2 / 2880
    return torch.where(a < 0.1, series, torch.log(1.0 - torch.exp(-torch.clamp(a, min=0.1))))


def log_mass(level: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(level) under a logistic(mean, exp(log_scale)) discretised to 0..levels-1 (level units;
    the arguments broadcast). log(sigmoid(a) - sigmoid(b)) = logsigmoid(a) + logsigmoid(-b) +
    log(1 - exp(b - a)), with b - a = -1/s: stable wherever the mass is."""
    inv = torch.exp(-log_scale)
    centred = level - mean
    upper = (centred + 0.5) * inv
    lower = (centred - 0.5) * inv
    middle = log_sigmoid(upper) + log_sigmoid(-lower) + log_one_minus_exp_neg(inv)
    return torch.where(
        level < 0.5, log_sigmoid(upper), torch.where(level > levels - 1.5, log_sigmoid(-lower), middle)
    )


def sample_level(u: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """A level of 0..levels-1 drawn by inverting the logistic's CDF at uniform ``u``: the
    continuous draw mean + s * logit(u), rounded to the nearest level and clipped, so that the
    end levels take the tails and P(level) is exactly :func:`log_mass`'s. u = 0 or 1 give an
    infinite draw, which the clip sends to an end level."""
    draw = mean + torch.exp(log_scale) * (torch.log(u) - torch.log(1.0 - u))
    return torch.clamp(torch.round(draw), 0.0, levels - 1.0)


def choose_component(log_w: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A mixture's component and a fresh uniform, both from one uniform u per value: u falls in
    component k's share [c_k-1, c_k) of the cumulative weights (log_w: (..., K)) with probability
    w_k, and, given that, (u - c_k-1) / w_k is uniform again, to invert component k's CDF with.
    Returns k (..., 1) and that uniform (...)."""
    w = torch.exp(log_w)
    upper = torch.cumsum(w, -1)
    k = (u[..., None] >= upper[..., :-1]).sum(-1, keepdim=True)
    start = torch.gather(upper - w, -1, k)[..., 0]
    return k, torch.clamp((u - start) / torch.gather(w, -1, k)[..., 0], 0.0, 1.0)
