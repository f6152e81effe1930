"""The VAE's networks: Gaussian encoder q(z|x); categorical (discrete data) or Gaussian decoder.

Every function that the exported graphs use takes its noise as an argument. A conditional VAE
(``classes``) takes the label y too: q(z|x, y) and p(x|z, y), the prior N(0, I) is shared. The
label enters as a one-hot block beside the encoder's and the decoder's first dense input (a
learned per-class offset of that layer); with no classes every layer is the unconditional one.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from plugins.common.blocks import one_hot

LOG_2PI = math.log(2 * math.pi)


def _mlp(inp: int, hidden: int, out: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = inp
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Rows (channels last) -> 2 x latent: two stride-2 convolutions, then a linear map."""

    # The label (``extra`` one-hot columns) joins the flattened features at the first dense layer.
    DENSE = 5

    def __init__(self, shape: tuple[int, int, int], hidden: int, out: int, extra: int = 0) -> None:
        super().__init__()
        h, w, c = shape
        self.shape = shape
        width = max(8, hidden // 8)
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.GELU(),
            nn.Flatten(),
            nn.Linear(2 * width * (h // 4) * (w // 4) + extra, hidden),
            nn.GELU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h, w, c = self.shape
        image = x.reshape(-1, h, w, c).permute(0, 3, 1, 2)
        if extra is None:
            return self.net(image)
        features = self.net[: self.DENSE](image)
        return self.net[self.DENSE :](torch.cat([features, extra], -1))


class ConvDecoder(nn.Module):
    """latent -> per-value outputs (``per`` each), rows channels last: the encoder mirrored."""

    def __init__(
        self, shape: tuple[int, int, int], latent: int, hidden: int, per: int, grouped: bool
    ) -> None:
        super().__init__()
        h, w, c = shape
        self.shape, self.per, self.grouped = shape, per, grouped
        self.width = max(8, hidden // 8)
        self.inp = nn.Sequential(
            nn.Linear(latent, hidden),  # latent: z's width, with a conditional VAE's label block
            nn.GELU(),
            nn.Linear(hidden, 2 * self.width * (h // 4) * (w // 4)),
            nn.GELU(),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * self.width, self.width, 4, 2, 1),
            nn.GELU(),
            nn.ConvTranspose2d(self.width, c * per, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, w, c = self.shape
        out = self.net(self.inp(z).reshape(-1, 2 * self.width, h // 4, w // 4))  # (B, c * per, h, w)
        out = out.reshape(-1, c, self.per, h, w)
        # As the MLP decoder lays them out: each value's levels together (B, h * w * c * levels),
        # or each output whole, channels last ([means, log-variances]).
        order = (0, 3, 4, 1, 2) if self.grouped else (0, 2, 3, 4, 1)
        return out.permute(*order).reshape(z.shape[0], -1)


def normal_log_pdf(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension of log N(z | mean, exp(log_var))."""
    return (-0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * torch.exp(-log_var))).sum(-1)


class VAE(nn.Module):
    def __init__(
        self,
        dim: int,
        levels: int | None,
        latent: int,
        hidden: int,
        depth: int,
        conv_shape: tuple[int, int, int] | None = None,
        classes: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.levels, self.latent, self.classes = dim, levels, latent, classes
        out = dim * levels if levels else 2 * dim
        if conv_shape is None:
            self.encoder: nn.Module = _mlp(dim + classes, hidden, 2 * latent, depth)
            self.decoder: nn.Module = _mlp(latent + classes, hidden, out, depth)
        else:
            self.encoder = ConvEncoder(conv_shape, hidden, 2 * latent, extra=classes)
            self.decoder = ConvDecoder(conv_shape, latent + classes, hidden, out // dim, grouped=bool(levels))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def _label(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """A conditional VAE's one-hot label block (None for an unconditional one)."""
        if not self.classes:
            return None
        if y is None:
            raise ValueError("a conditional VAE needs a label per row")
        return one_hot(y, self.classes)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = (x - self.mean) / self.std
        label = self._label(y)
        if label is None:
            stats = self.encoder(h)
        elif isinstance(self.encoder, ConvEncoder):
            stats = self.encoder(h, label)
        else:
            stats = self.encoder(torch.cat([h, label], -1))
        mean, log_var = stats.chunk(2, dim=-1)
        return mean, torch.clamp(log_var, -12.0, 8.0)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Distribution parameters: per-pixel log-probabilities (B, D, L), or (mean, log_var) (B, 2D)."""
        label = self._label(y)
        out = self.decoder(z if label is None else torch.cat([z, label], -1))
        if self.levels:
            return F.log_softmax(out.reshape(*z.shape[:-1], self.dim, self.levels), dim=-1)
        mean, log_var = out.chunk(2, dim=-1)
        return torch.cat(
            [mean * self.std + self.mean, torch.clamp(log_var, -10.0, 6.0) + 2 * torch.log(self.std)], -1
        )

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] in data units: the expected level (discrete data) or the Gaussian's mean."""
        params = self.decode(z)
        if self.levels:
            levels = torch.arange(self.levels, dtype=params.dtype, device=params.device)
            return (torch.exp(params) * levels).sum(-1)
        return params.chunk(2, dim=-1)[0]

    def log_likelihood(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over dimensions."""
        if self.levels:
            levels = torch.arange(self.levels, dtype=x.dtype, device=x.device)
            one_hot = (x.unsqueeze(-1) == levels).to(params.dtype)
            return (one_hot * params).sum((-1, -2))
        mean, log_var = params.chunk(2, dim=-1)
        return normal_log_pdf(x, mean, log_var)

    def log_weight(
        self, x: torch.Tensor, eps: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z), log p(z), log q(z|x)) for z = mean + sigma * eps: one importance draw
        (given y: log p(x|z,y), log p(z), log q(z|x,y), a log importance weight of p(x|y))."""
        mean, log_var = self.encode(x, y)
        z = mean + torch.exp(0.5 * log_var) * eps
        rec = self.log_likelihood(x, self.decode(z, y))
        prior = normal_log_pdf(z, torch.zeros_like(z), torch.zeros_like(z))
        post = normal_log_pdf(z, mean, log_var)
        return rec, prior, post

    def sample(self, z: torch.Tensor, u: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode z and draw x from p(x|z) (p(x|z,y)) with explicit noise u (uniform for levels,
        normal else)."""
        params = self.decode(z, y)
        if self.levels:
            cdf = torch.cumsum(torch.exp(params), -1)[..., :-1]
            return (u.unsqueeze(-1) >= cdf).to(torch.float32).sum(-1)
        mean, log_var = params.chunk(2, dim=-1)
        return mean + torch.exp(0.5 * log_var) * u
