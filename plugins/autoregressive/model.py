"""A masked autoregressive network (MADE) and the conditionals it parameterises.

MADE (Germain et al., 2015) masks the weights of an MLP so that the outputs for dimension d
see only the inputs before d (the natural order: raster order on images). One forward pass
gives every conditional, so log P(x) = sum_d log P(x_d | x_<d) is one call; sampling fills
one dimension per step. Conditionals:

- ``softmax``: an unordered categorical over the L levels;
- ``logistic``: a mixture of discretised logistics (PixelCNN++): the mass of level l is the
  logistic mixture's mass on [l - 1/2, l + 1/2], with the end levels taking the tails, so
  neighbouring levels share strength;
- ``gaussian`` (continuous data): a mixture of Gaussians per dimension, an exact density.

Sampling draws a level (or a mixture component) by Gumbel-max, argmax(log p + g): scaling g by
a temperature T draws from softmax(log p / T), as the runtime scales all noise by T.

Conditional on a class label y (the networks' ``classes``), log p(x|y) = sum_d log p(x_d | x_<d, y):
a learned label embedding is added to every masked layer's pre-activation (MADE: a bias per
hidden unit; PixelCNN: a bias per channel plus a few per-class maps, by position) and a per-class
bias to every output, so the label reaches the first dimension's conditional too. These terms
depend on y and the position only, never on x, so the autoregressive order is kept.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from plugins.common.blocks import LabelEmbedding
from plugins.common.logistic import log_mass

LOG_2PI = math.log(2 * math.pi)
LABEL_MAPS = 8  # a conditional PixelCNN's learned maps per class (its location-dependent input)


class MaskedLinear(nn.Linear):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def degrees(dim: int, hidden: int, depth: int) -> list[torch.Tensor]:
    """Degrees of the input units (1..D) and of each hidden layer (cycled 1..D-1, balanced)."""
    inputs = torch.arange(1, dim + 1)
    layers = [torch.arange(hidden) % max(dim - 1, 1) + 1 for _ in range(depth)]
    return [inputs, *layers]


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only pixels before the centre in raster order (type A), or the
    centre too (type B: deeper layers, whose centre never saw the centre pixel's value)."""

    def __init__(self, cin: int, cout: int, kernel: int, kind: str) -> None:
        super().__init__(cin, cout, kernel, padding=kernel // 2)
        mask = torch.ones_like(self.weight)
        c = kernel // 2
        mask[:, :, c, c + (kind == "B") :] = 0
        mask[:, :, c + 1 :, :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    """Maps rows of (h, w) images to ``params`` numbers per pixel, raster order: (n, D, params).

    Masked convolutions share their weights across positions: on a thousand 8x8 digits that
    prior generalises where a MADE's per-pixel weights overfit (benchmarks/RESULTS.md).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        params: int,
        channels: int,
        layers: int,
        dropout: float,
        classes: int | None = None,
    ) -> None:
        super().__init__()
        self.shape, self.dim, self.params = shape, shape[0] * shape[1], params
        self.channels, self.classes = channels, classes
        self.first = MaskedConv2d(1, channels, 7, "A")
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GELU(), MaskedConv2d(channels, channels, 3, "B"), nn.GELU(), nn.Dropout(dropout))
            for _ in range(layers)
        )
        self.head = nn.Sequential(
            nn.GELU(), nn.Conv2d(channels, channels, 1), nn.GELU(), nn.Conv2d(channels, params, 1)
        )
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))
        if classes:  # created last: an unconditional network's initialisation stays as it was
            self.label = LabelEmbedding(classes, channels * (layers + 1))
            # Location-dependent conditioning (van den Oord et al., 2016): a few learned maps
            # per class, brought to each layer by its own 1x1 convolution, so a class can say
            # where its strokes are at every layer (a per-channel bias alone cannot).
            self.label_maps = LabelEmbedding(classes, LABEL_MAPS * self.dim)
            self.label_in = nn.ModuleList(
                nn.Conv2d(LABEL_MAPS, channels, 1, bias=False) for _ in range(layers + 1)
            )
            self.label_out = _output_bias(classes, self.dim * params)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = ((x - self.mean) / self.std).reshape(-1, 1, *self.shape)
        h = self.first(h)
        if y is None:
            for block in self.blocks:
                h = h + block(h)
            return self.head(h).permute(0, 2, 3, 1).reshape(-1, self.dim, self.params)
        # For the first (7x7) layer's output and each block's masked convolution, before its
        # activation: a bias per channel and the class maps' 1x1 convolution. Neither sees x,
        # so causality holds.
        e = self.label(y).reshape(-1, len(self.blocks) + 1, self.channels, 1, 1)
        maps = self.label_maps(y).reshape(-1, LABEL_MAPS, *self.shape)
        h = h + e[:, 0] + self.label_in[0](maps)
        for i, block in enumerate(self.blocks):
            act, conv, act2, drop = block
            h = h + drop(act2(conv(act(h)) + e[:, i + 1] + self.label_in[i + 1](maps)))
        out = self.head(h).permute(0, 2, 3, 1).reshape(-1, self.dim, self.params)
        return out + self.label_out(y).reshape(-1, self.dim, self.params)


def _output_bias(classes: int, width: int) -> LabelEmbedding:
    """A per-class bias on every output, starting at zero (the shared network's answer): a
    class's own marginal per dimension, which the first dimensions' conditionals need most."""
    out = LabelEmbedding(classes, width)
    nn.init.zeros_(out.table.weight)
    return out


class MADE(nn.Module):
    """Maps rows (data units) to ``params`` numbers per dimension: (n, D, params)."""

    def __init__(
        self, dim: int, params: int, hidden: int, depth: int, dropout: float, classes: int | None = None
    ) -> None:
        super().__init__()
        self.dim, self.params, self.classes = dim, params, classes
        deg = degrees(dim, hidden, depth)
        out_deg = torch.arange(1, dim + 1).repeat_interleave(params)
        layers: list[nn.Module] = []
        for before, after in itertools.pairwise(deg):
            layers += [MaskedLinear(after[:, None] >= before[None, :]), nn.GELU(), nn.Dropout(dropout)]
        self.hidden = nn.Sequential(*layers)
        self.out = MaskedLinear(out_deg[:, None] > deg[-1][None, :])
        # Inputs straight to outputs (strictly earlier dimensions): the linear part of each
        # conditional, which the hidden layers need not relearn.
        self.direct = MaskedLinear(out_deg[:, None] > deg[0][None, :])
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if classes:  # created last: an unconditional network's initialisation stays as it was
            self.label = LabelEmbedding(classes, hidden * depth)
            self.label_out = _output_bias(classes, dim * params)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = (x - self.mean) / self.std
        if y is None:
            out = self.out(self.hidden(h)) + self.direct(h)
            return out.reshape(-1, self.dim, self.params)
        # The label's bias on every masked layer's pre-activation (a unit of any degree may
        # see y: it is known before every dimension), and a per-class bias on every output.
        e = self.label(y).chunk(len(self.hidden) // 3, dim=1)
        a = h
        for i in range(0, len(self.hidden), 3):
            linear, act, drop = self.hidden[i : i + 3]
            a = drop(act(linear(a) + e[i // 3]))
        out = self.out(a) + self.direct(h) + self.label_out(y)
        return out.reshape(-1, self.dim, self.params)


def _gumbel_choice(log_p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """argmax(log p + g) as a float index; ties (none with continuous noise) take the first."""
    return torch.argmax(log_p + g, dim=-1).to(log_p.dtype)


class Categorical(nn.Module):
    """Softmax over ``levels`` per dimension."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.params = levels

    def level_log_probs(self, params: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(params, dim=-1)


class DiscretizedLogistic(nn.Module):
    """A mixture of ``components`` discretised logistics over the levels 0..L-1."""

    def __init__(self, levels: int, components: int) -> None:
        super().__init__()
        self.levels, self.components = levels, components
        self.params = 3 * components

    def level_log_probs(self, params: torch.Tensor) -> torch.Tensor:
        """(..., 3K) -> (..., L): log of each level's mass, normalised over the levels exactly."""
        k = self.components
        logits, mean, log_scale = params[..., :k], params[..., k : 2 * k], params[..., 2 * k :]
        levels = torch.arange(self.levels, dtype=params.dtype, device=params.device)[:, None]  # (L, 1)
        masses = log_mass(levels, mean[..., None, :], log_scale.clamp(-7.0, 7.0)[..., None, :], self.levels)
        return torch.logsumexp(F.log_softmax(logits, dim=-1)[..., None, :] + masses, dim=-1)


class GaussianMixture(nn.Module):
    """A mixture of ``components`` Gaussians per dimension, on standardised values."""

    def __init__(self, components: int) -> None:
        super().__init__()
        self.components = components
        self.params = 3 * components

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = self.components
        return (
            F.log_softmax(params[..., :k], dim=-1),
            params[..., k : 2 * k],
            params[..., 2 * k :].clamp(-7, 5),
        )

    def log_density(self, params: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log N-mixture density of standardised values z (..., ) under params (..., 3K)."""
        log_w, mean, log_scale = self.split(params)
        scaled = (z[..., None] - mean) * torch.exp(-log_scale)
        return torch.logsumexp(log_w - 0.5 * (LOG_2PI + scaled**2) - log_scale, dim=-1)


class Autoregressive(nn.Module):
    """MADE + conditional: exact log-likelihood of rows, and one sampling step."""

    def __init__(self, network: nn.Module, conditional: nn.Module, levels: int | None) -> None:
        super().__init__()
        self.network = network
        self.conditional = conditional
        self.levels = levels
        self.steps = network.dim  # the sampler fills one dimension per step

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x), or log p(x|y) for a conditional network's (n, 1) labels ``y``."""
        params = self.network(x) if y is None else self.network(x, y)
        if self.levels:
            log_p = self.conditional.level_log_probs(params)  # (n, D, L)
            idx = x.round().clamp(0, self.levels - 1).long()[..., None]
            return torch.gather(log_p, -1, idx)[..., 0].sum(-1)
        z = (x - self.network.mean) / self.network.std
        return (self.conditional.log_density(params, z) - torch.log(self.network.std)).sum(-1)

    def step(
        self, state: torch.Tensor, step: torch.Tensor, *noise: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fill dimension ``step`` of ``state`` (data units) with a draw from its conditional
        (given the labels ``y`` of a conditional network, the same at every step).

        Discrete data: noise is (g,), Gumbel draws over the levels. Continuous: (g, z), Gumbel
        draws over the mixture components and one standard normal.
        """
        dims = torch.arange(state.shape[1], device=state.device)
        current = dims[None, :] == step  # (n, D): the dimension this step fills
        out = self.network(state) if y is None else self.network(state, y)
        params = (out * current.to(state.dtype)[:, :, None]).sum(1)  # (n, P)
        if self.levels:
            value = _gumbel_choice(self.conditional.level_log_probs(params), noise[0])
        else:
            g, z = noise
            log_w, mean, log_scale = self.conditional.split(params)
            components = torch.arange(log_w.shape[-1], device=g.device)
            chosen = (components[None, :] == _gumbel_choice(log_w, g)[:, None]).to(params.dtype)
            standard = (mean * chosen).sum(-1) + (torch.exp(log_scale) * chosen).sum(-1) * z[:, 0]
            weights = current.to(state.dtype)
            value = standard * (weights * self.network.std).sum(1) + (weights * self.network.mean).sum(1)
        return torch.where(current, value[:, None], state)

    def sample(self, noise: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
        """The PyTorch reference of the runtime's loop: ``noise`` arrays are (steps, n, dim);
        a conditional network's labels ``noise["y"]`` (n, 1) are fed to every step."""
        names = ("g",) if self.levels else ("g", "z")
        n = noise["g"].shape[1]
        y = noise["y"].long() if "y" in noise else None
        state = torch.zeros(n, self.network.dim)
        for t in range(steps):
            step = torch.full((n, 1), t, dtype=torch.int64)
            state = self.step(state, step, *(noise[name][t] for name in names), y=y)
        return state
