"""Invertible blocks shared by the flows: actnorm, Glow's invertible 1x1 convolution (on a flat
vector, the same thing: a learned mixing matrix), squeeze, and the one reshape between flat rows
and images.

Each block acts on dimension 1 of its input, which is either a flat vector ``(n, d)`` or the
channels of an image ``(n, c, h, w)``; on an image the same per-channel map is applied at every
pixel, so its log-determinant is the per-pixel one times ``h * w``. Every log-determinant is in
closed form, so the graphs export to ONNX without linalg ops.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def pixels(h: torch.Tensor) -> int:
    """Positions each channel's map is applied at: 1 for a flat vector, h * w for an image."""
    return 1 if h.dim() == 2 else h.shape[2] * h.shape[3]


def _per_channel(v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return v if h.dim() == 2 else v[None, :, None, None]


def to_image(rows: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Flat channels-last rows (n, h*w*c) -> (n, c, h, w): the one reshape a network makes."""
    height, width, channels = shape
    return rows.reshape(-1, height, width, channels).permute(0, 3, 1, 2)


def to_rows(image: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) -> flat channels-last rows (n, h*w*c), the inverse of :func:`to_image`."""
    return image.permute(0, 2, 3, 1).reshape(image.shape[0], -1)


def squeeze(h: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) -> (n, 4c, h/2, w/2): each 2x2 block of pixels becomes one pixel's channels."""
    n, c, height, width = h.shape
    h = h.reshape(n, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return h.reshape(n, 4 * c, height // 2, width // 2)


def unsqueeze(h: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`squeeze`."""
    n, c, height, width = h.shape
    h = h.reshape(n, c // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    return h.reshape(n, c // 4, 2 * height, 2 * width)


class ActNorm(nn.Module):
    """A per-channel affine map initialised from the first batch to zero mean and unit variance
    (Glow), so every layer starts from well-scaled inputs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _init(self, h: torch.Tensor) -> None:
        flat = h.transpose(0, 1).reshape(h.shape[1], -1)
        self.loc.copy_(-flat.mean(1))
        self.log_scale.copy_(-torch.log(flat.std(1) + 1e-6))
        self.initialized.fill_(True)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._init(h)
        out = (h + _per_channel(self.loc, h)) * torch.exp(_per_channel(self.log_scale, h))
        return out, (self.log_scale.sum() * pixels(h)).expand(h.shape[0])

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.exp(-_per_channel(self.log_scale, h)) - _per_channel(self.loc, h)


class InvertibleLinear(nn.Module):
    """Glow's invertible 1x1 convolution, LU-parametrised: W = P L (U + diag(s)).

    On a flat vector it mixes all dimensions; on an image, the channels of each pixel. The
    log-determinant is sum(log|s|) per position, so no slogdet is needed in the exported graph.
    """

    def __init__(self, dim: int, generator: torch.Generator) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(dim, dim), -1))
        self.register_buffer("eye", torch.eye(dim))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        self.register_buffer("w_inv", torch.eye(dim))
        self.register_buffer("w_frozen", torch.eye(dim))
        self.frozen = False  # a plain attribute: export must not branch on a tensor

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    @staticmethod
    def _mix(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if h.dim() == 2:
            return h @ weight.T
        return F.conv2d(h, weight[:, :, None, None])

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # After training the product P L U is fixed: use it as one constant matrix, so PyTorch
        # and ONNX Runtime multiply by the very same weights.
        weight = self.w_frozen if self.frozen and not self.training else self.weight()
        return self._mix(h, weight), (self.log_s.sum() * pixels(h)).expand(h.shape[0])

    def freeze_inverse(self) -> None:
        with torch.no_grad():
            weight = self.weight().double()
            self.w_frozen.copy_(weight.float())
            self.w_inv.copy_(torch.linalg.inv(weight).float())
            self.frozen = True

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        return self._mix(h, self.w_inv)
