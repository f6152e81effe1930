"""Generator G(z) and discriminator D(x) = sigmoid(logit(x)): MLPs over the flat row, or DCGAN's
convolutions over the image (Radford et al. 2016).

Conditional (``classes``): G(z, y) takes the label as a one-hot block beside z, and D(x, y) is a
projection discriminator (Miyato & Koyama 2018): logit = psi(phi(x)) + <e_y, phi(x)>, with phi
D's last features (the MLP's last hidden layer, the convolutions' flattened last map) and e_y a
learned vector per class, so the label asks "is this a real y?" of features shared by every class.

Both architectures share the ends: G's raw output goes through a sigmoid to [0, 1] on discrete
data (rounded to the levels in data units) or is de-standardised on continuous data, and D reads
rows in data units through the same Scaler. Only the body between differs.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from plugins.common.blocks import one_hot
from plugins.common.invertible import to_image, to_rows


def mlp(
    inp: int,
    hidden: int,
    out: int,
    depth: int,
    act: nn.Module | None = None,
    dropout: float = 0.0,
    slope: float = 0.2,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = inp
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), act if act is not None else nn.LeakyReLU(slope)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


class Scaler(nn.Module):
    """Data units <-> the networks' units: [0, 1] for discrete levels, standardised otherwise."""

    def __init__(self, dim: int, levels: int | None) -> None:
        super().__init__()
        self.levels = levels
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        if self.levels:
            return x / (self.levels - 1)
        return (x - self.mean) / self.std


def _needs(y: torch.Tensor | None, classes: int) -> None:
    if classes and y is None:
        raise ValueError("a conditional GAN needs a label per row")


class Generator(nn.Module):
    """The MLP generator; :class:`ConvGenerator` swaps the body (``_raw``) and keeps the ends."""

    def __init__(
        self, latent: int, dim: int, levels: int | None, hidden: int, depth: int, classes: int = 0
    ) -> None:
        super().__init__()
        self.levels, self.classes = levels, classes
        self.net = mlp(latent + classes, hidden, dim, depth, nn.ReLU())
        self.scaler = Scaler(dim, levels)

    def _raw(self, zy: torch.Tensor) -> torch.Tensor:
        """(n, latent + classes) -> (n, dim) flat rows before the output's squashing."""
        return self.net(zy)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Samples in the networks' units (what D sees during training)."""
        _needs(y, self.classes)
        out = self._raw(torch.cat([z, one_hot(y, self.classes)], -1) if self.classes else z)
        return torch.sigmoid(out) if self.levels else out

    def sample(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Samples in data units; discrete data is rounded to its levels."""
        out = self.forward(z, y)
        if self.levels:
            return torch.round(out * (self.levels - 1))
        return out * self.scaler.std + self.scaler.mean


class Discriminator(nn.Module):
    def __init__(
        self,
        dim: int,
        levels: int | None,
        hidden: int,
        depth: int,
        dropout: float = 0.0,
        slope: float = 0.2,
        classes: int = 0,
    ) -> None:
        super().__init__()
        self.classes = classes
        # Dropout keeps D from memorising ~1,250 images, which starves G of gradient.
        self.net = mlp(dim, hidden, 1, depth, dropout=dropout, slope=slope)
        self.scaler = Scaler(dim, levels)
        if classes:
            # The projection's class vectors e_y, one per row of a bias-free linear map.
            self.embed = nn.Linear(classes, hidden, bias=False)

    def _features(self, h: torch.Tensor) -> torch.Tensor:
        """phi(x): the last hidden layer."""
        return self.net[:-1](h)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net[-1](features)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logit of D on inputs in the networks' units."""
        _needs(y, self.classes)
        features = self._features(h)
        logit = self._head(features).squeeze(-1)
        if not self.classes:
            return logit
        return logit + (self.embed(one_hot(y, self.classes)) * features).sum(-1)

    def logit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logit of D on rows in data units (the exported discriminator)."""
        return self.forward(self.scaler.to_net(x), y)


def stages(shape: tuple[int, int, int]) -> int:
    """Stride-2 steps between the image and DCGAN's smallest map: halve while both sides are even
    and stay at 4 or more (32x32 -> 4x4: 3; 8x8 -> 4x4: 1), and at least once (4x4 -> 2x2)."""
    h, w, _ = shape
    if h % 4 or w % 4:
        raise ValueError(f"the conv GAN needs a height and width divisible by 4, not {h}x{w}")
    n = 1
    while h % (2 ** (n + 1)) == 0 and w % (2 ** (n + 1)) == 0 and min(h, w) // 2 ** (n + 1) >= 4:
        n += 1
    return n


def widths(channels: int, n: int) -> list[int]:
    """DCGAN's channels per stride-2 step, finest first: ``channels`` at half the image's size,
    doubling at each halving (32x32: c at 16x16, 2c at 8x8, 4c at 4x4)."""
    return [channels * 2**i for i in range(n)]


def _up(cin: int, cout: int, bias: bool = False) -> nn.ConvTranspose2d:
    # DCGAN's 4x4 kernel, stride 2, padding 1: exactly doubles the height and width. A bias
    # before BatchNorm would be subtracted again, so only the last layer (no norm) has one.
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias)


class ConvGenerator(Generator):
    """DCGAN's generator: z (and the one-hot label) -> a linear map to the smallest map, then
    stride-2 transposed convolutions with BatchNorm and ReLU, the last one to the image's
    channels (no norm: the output's squashing follows). BatchNorm runs in eval mode (running
    statistics) for sampling, export and validation, so a row's sample never depends on its batch."""

    def __init__(
        self,
        latent: int,
        shape: tuple[int, int, int],
        levels: int | None,
        channels: int,
        classes: int = 0,
    ) -> None:
        nn.Module.__init__(self)
        h, w, c = shape
        self.levels, self.classes, self.shape = levels, classes, shape
        n = stages(shape)
        width = widths(channels, n)
        self.top = (width[-1], h // 2**n, w // 2**n)
        self.dense = nn.Linear(latent + classes, width[-1] * self.top[1] * self.top[2], bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(width[-1]), nn.ReLU()]
        for cin, cout in zip(width[:0:-1], width[-2::-1], strict=True):
            layers += [_up(cin, cout), nn.BatchNorm2d(cout), nn.ReLU()]
        layers.append(_up(width[0], c, bias=True))
        self.net = nn.Sequential(*layers)
        self.scaler = Scaler(h * w * c, levels)

    def _raw(self, zy: torch.Tensor) -> torch.Tensor:
        return to_rows(self.net(self.dense(zy).reshape(-1, *self.top)))


class ConvDiscriminator(Discriminator):
    """DCGAN's discriminator: stride-2 4x4 convolutions with LeakyReLU(0.2), the first without a
    norm, the others with ``norm`` ("spectral": every weight, the linear logit's and the class
    vectors' too, divided by its largest singular value, as SNGAN does; "batch": BatchNorm),
    then a linear logit of the flattened last map (phi(x) of the projection).

    Spectral norm makes D the same function in training and at serving: BatchNorm's batch
    statistics (of all-real or all-fake batches in training) become running averages of both
    in eval mode, so the served P(real) is not the D that trained. :meth:`freeze` folds the
    spectral norm into plain weights once training ends (export and the stored weights)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        levels: int | None,
        channels: int,
        norm: str = "spectral",
        classes: int = 0,
    ) -> None:
        nn.Module.__init__(self)
        h, w, c = shape
        self.classes, self.shape = classes, shape
        n = stages(shape)
        width = widths(channels, n)
        spectral = norm == "spectral"
        sn = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(c, width[0], 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        for cin, cout in itertools.pairwise(width):
            layers.append(sn(nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=spectral)))
            if not spectral:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)
        features = width[-1] * (h // 2**n) * (w // 2**n)
        self.head = sn(nn.Linear(features, 1))
        self.scaler = Scaler(h * w * c, levels)
        if classes:
            self.embed = sn(nn.Linear(classes, features, bias=False))

    def _features(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(to_image(h, self.shape)).flatten(1)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def freeze(self) -> None:
        """Spectral norm folded into plain weights: W / sigma with the last training step's
        power-iteration vectors, what eval mode computes, so the exported graph has no
        normalisation to trace and the stored weights are the ones served."""
        self.eval()  # eval: folding must not run one more power iteration
        for module in self.modules():
            if nn.utils.parametrize.is_parametrized(module, "weight"):
                nn.utils.parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
