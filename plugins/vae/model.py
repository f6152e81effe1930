"""The VAE's networks: a Gaussian encoder q(z|x) and a decoder of p(x|z)'s parameters.

Three architectures: ``mlp`` (dense layers over the flat row), ``conv`` (image data: residual
convolutions, halving the height and width down to 4 or less in the encoder and doubling back
in the decoder) and ``broadcast`` (conv's encoder; the decoder tiles z over the image beside
coordinate planes and convolves at full size). The decoder's outputs are per value, (n, D,
per); plugins.vae.likelihood says what they mean (a categorical, a discretised-logistic mixture
or a Gaussian).

Every function that the exported graphs use takes its noise as an argument. A conditional VAE
(``classes``) takes the label y too: q(z|x, y) and p(x|z, y), the prior N(0, I) is shared. The
label enters as a one-hot block beside the encoder's and the decoder's first dense input (a
learned per-class offset of that layer); with no classes every layer is the unconditional one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from plugins.common.blocks import one_hot
from plugins.common.causal import planes
from plugins.vae.likelihood import Gaussian, Likelihood, Params, normal_log_pdf


def _mlp(inp: int, hidden: int, out: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = inp
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


def halvings(shape: tuple[int, int, int]) -> int:
    """How often the conv encoder halves the height and width: while both are even and above 4
    (32x32 -> 4x4: 3; 8x8 -> 4x4: 1; 4x4 and odd sizes: none)."""
    h, w, _ = shape
    n = 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) > 4:
        h, w, n = h // 2, w // 2, n + 1
    return n


class ResBlock(nn.Module):
    """h + conv(gelu(conv(gelu(h)))): two 3x3 convolutions on a residual path, the second
    starting at zero, so each block begins as the identity and a deep stack trains from the start."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.conv2(F.gelu(self.conv1(F.gelu(h))))


def _widths(channels: int, image_channels: int, stages: int) -> list[int]:
    """Channels at each resolution, the image's own first: ``channels`` after the first halving
    (or the stem, with none), twice as many after the second and below."""
    return [image_channels, channels] + [2 * channels] * (stages - 1)


class ConvEncoder(nn.Module):
    """Rows (channels last) -> ``out`` numbers. Each halving is a stride-2 4x4 convolution
    followed by ``blocks`` residual blocks; an image too small to halve gets a 3x3 stem and its
    blocks at full size. One dense layer at the end (the label joins there).

    No residual block runs at full size: at 32x32 a 3x3 convolution costs 4x its 16x16 twin,
    and those dominated the step time (measured in VAEConfig.resolve's docstring)."""

    def __init__(
        self, shape: tuple[int, int, int], channels: int, blocks: int, out: int, extra: int = 0
    ) -> None:
        super().__init__()
        h, w, c = shape
        self.shape = shape
        stages = halvings(shape)
        widths = _widths(channels, c, stages)
        layers: list[nn.Module] = []
        if stages == 0:
            layers.append(nn.Conv2d(c, channels, 3, padding=1))
            layers += [ResBlock(channels) for _ in range(blocks)]
        for s in range(1, stages + 1):
            layers.append(nn.Conv2d(widths[s - 1], widths[s], 4, stride=2, padding=1))
            layers += [ResBlock(widths[s]) for _ in range(blocks)]
        self.conv = nn.Sequential(*layers)
        self.dense = nn.Linear(widths[-1] * (h >> stages) * (w >> stages) + extra, out)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        features = F.gelu(self.conv(planes(x, self.shape))).flatten(1)
        return self.dense(features if extra is None else torch.cat([features, extra], -1))


def _per_value(planes_out: torch.Tensor, shape: tuple[int, int, int], per: int) -> torch.Tensor:
    """A decoder's (n, c * per, h, w) planes as (n, D, per): (n, c, per, h, w) -> (n, h, w, c,
    per), a value's numbers together, rows channels last."""
    h, w, c = shape
    n = planes_out.shape[0]
    return planes_out.reshape(n, c, per, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * c, per)


class ConvDecoder(nn.Module):
    """latent -> (n, D, per) per-value outputs, rows channels last: the encoder mirrored. A
    dense layer to the smallest resolution; at each, ``blocks`` residual blocks and a stride-2
    transposed 4x4 convolution up (the last to ``channels`` at full size); then a 3x3 head of
    c x per planes."""

    def __init__(
        self, shape: tuple[int, int, int], latent: int, channels: int, blocks: int, per: int
    ) -> None:
        super().__init__()
        h, w, c = shape
        self.shape, self.per = shape, per
        stages = halvings(shape)
        widths = _widths(channels, c, stages)
        widths[0] = channels  # the head's input: full size, ``channels`` planes
        self.top = (widths[-1], h >> stages, w >> stages)
        self.dense = nn.Linear(latent, widths[-1] * (h >> stages) * (w >> stages))
        layers: list[nn.Module] = []
        for s in range(stages, 0, -1):
            layers += [ResBlock(widths[s]) for _ in range(blocks)]
            layers += [nn.GELU(), nn.ConvTranspose2d(widths[s], widths[s - 1], 4, stride=2, padding=1)]
        if stages == 0:
            layers += [ResBlock(channels) for _ in range(blocks)]
        layers += [nn.GELU(), nn.Conv2d(channels, c * per, 3, padding=1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _per_value(self.conv(self.dense(z).reshape(-1, *self.top)), self.shape, self.per)


class BroadcastDecoder(nn.Module):
    """latent -> (n, D, per) per-value outputs through a spatial broadcast (Watters et al. 2019):
    z tiled over the image, two coordinate planes (-1..1 across and down) beside it, a 3x3 stem
    to ``channels``, ``blocks`` residual blocks and a 3x3 head, all at full size.

    Every pixel sees the same code and its own coordinates, so a position is a function of the
    code the convolutions can read off directly; through a dense layer and upsampling (``conv``)
    it has to be spread over the pixels, and the code tends to mix position with the rest."""

    def __init__(
        self, shape: tuple[int, int, int], latent: int, channels: int, blocks: int, per: int
    ) -> None:
        super().__init__()
        h, w, c = shape
        self.shape, self.per = shape, per
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)
        layers: list[nn.Module] = [nn.Conv2d(latent + 2, channels, 3, padding=1)]
        layers += [ResBlock(channels) for _ in range(blocks)]
        layers += [nn.GELU(), nn.Conv2d(channels, c * per, 3, padding=1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, w, _ = self.shape
        n = z.shape[0]
        tiled = z[:, :, None, None].expand(-1, -1, h, w)
        return _per_value(
            self.conv(torch.cat([tiled, self.coords.expand(n, -1, -1, -1)], 1)), self.shape, self.per
        )


class VAE(nn.Module):
    def __init__(
        self,
        dim: int,
        likelihood: Likelihood,
        latent: int,
        hidden: int,
        depth: int,
        conv_shape: tuple[int, int, int] | None = None,
        classes: int = 0,
        channels: int = 32,
        blocks: int = 1,
        broadcast: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.latent, self.classes = dim, latent, classes
        self.likelihood = likelihood
        per = likelihood.per
        if conv_shape is None:
            self.encoder: nn.Module = _mlp(dim + classes, hidden, 2 * latent, depth)
            self.decoder: nn.Module = _mlp(latent + classes, hidden, dim * per, depth)
        else:
            self.encoder = ConvEncoder(conv_shape, channels, blocks, 2 * latent, extra=classes)
            decoder = BroadcastDecoder if broadcast else ConvDecoder
            self.decoder = decoder(conv_shape, latent + classes, channels, blocks, per)
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

    def params(self, z: torch.Tensor, y: torch.Tensor | None = None) -> Params:
        """p(x|z)'s (p(x|z,y)'s) distribution parameters, as plugins.vae.likelihood splits them."""
        label = self._label(y)
        out = self.decoder(z if label is None else torch.cat([z, label], -1))
        if out.dim() == 2:  # the MLP: each value's numbers together, or a Gaussian's [means, log-variances]
            if isinstance(self.likelihood, Gaussian):
                out = torch.stack(out.chunk(2, -1), -1)
            out = out.reshape(*z.shape[:-1], self.dim, self.likelihood.per)
        return self.likelihood.split(out, self.mean, self.std)

    @property
    def levels(self) -> int | None:
        return getattr(self.likelihood, "levels", None)

    @property
    def has_table(self) -> bool:
        """Whether p(x|z)'s parameters are served as a graph (plugins.vae.likelihood: not the logistic's)."""
        return hasattr(self.likelihood, "table")

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder-params graph: per-level log-probabilities (B, D, L) for discrete data, or
        [means, log-variances] (B, 2D) for continuous (plugins.vae.likelihood's ``table``)."""
        return self.likelihood.table(self.params(z, y))  # type: ignore[attr-defined]

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder-mean graph, in data units (plugins.vae.likelihood's ``mean``)."""
        return self.likelihood.mean(self.params(z))

    def log_likelihood(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """log p(x|z) summed over dimensions."""
        return self.likelihood.log_likelihood(x, params)

    def log_weight(
        self, x: torch.Tensor, eps: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log p(x|z), log p(z), log q(z|x)) for z = mean + sigma * eps: one importance draw
        (given y: log p(x|z,y), log p(z), log q(z|x,y), a log importance weight of p(x|y))."""
        mean, log_var = self.encode(x, y)
        z = mean + torch.exp(0.5 * log_var) * eps
        rec = self.log_likelihood(x, self.params(z, y))
        prior = normal_log_pdf(z, torch.zeros_like(z), torch.zeros_like(z))
        post = normal_log_pdf(z, mean, log_var)
        return rec, prior, post

    def sample(self, z: torch.Tensor, u: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode z and draw x from p(x|z) (p(x|z,y)) with explicit noise u (uniform for levels,
        normal else)."""
        return self.likelihood.sample(self.params(z, y), u)
