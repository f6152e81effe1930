"""A Gaussian diffusion with a discrete-time variational bound (VDM's parameterisation).

The forward process is variance preserving: z_t = alpha_t x + sigma_t eps with
alpha_t^2 = sigmoid(-gamma(t)), sigma_t^2 = sigmoid(gamma(t)), and gamma rising linearly from
``gamma_min`` (t = 0, almost no noise) to ``gamma_max`` (t = 1, almost pure noise); x is the
data scaled to [-1, 1] (discrete levels) or standardised (continuous data).

The generative model is the T-step ancestral sampler: z_1 ~ N(0, I), z_s ~ p(z_s | z_t) =
q(z_s | z_t, x = x_hat(z_t)) on the grid t = i / T, then x ~ p(x | z_0). Its variational bound
(Kingma et al. 2021, eq. 11 and 13) is a true lower bound on log P(x) of *that* sampler:

    log P(x) >= -KL(q(z_1|x) || N(0, I)) + E_q log p(x | z_0)
                - (T / 2) E_{i ~ U{1..T}, eps} (SNR(s) - SNR(t)) ||x - x_hat(z_t)||^2,

with s = t - 1/T. On discrete data p(x | z_0) is a categorical over the levels per dimension
(its logits are the Gaussian likelihood of z_0 at each level), so the bound is on the
probability mass and its bits/dim compare with the flow's and the VAE's.

The denoiser on discrete data predicts a categorical over the levels for each dimension, with
logits = network(z_t) + log N(z_t,i; alpha_t c_l, sigma_t^2). The second term is the exact
evidence that dimension i's own noisy value gives about its level, so at low noise the
prediction is exact rounding (no network can learn rounding at scale sigma_t, which is what
made a plain noise-predicting MLP score worse than the uniform model); the network supplies
what the other dimensions say, which is the part worth learning.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LOG_2PI = math.log(2 * math.pi)


def fourier(gamma: torch.Tensor, width: int) -> torch.Tensor:
    """(n, 1) log-SNR -> (n, width) sines and cosines at geometric frequencies."""
    half = width // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(64.0), half, device=gamma.device))
    angle = gamma / 16.0 * freqs[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], -1)


class MLPDenoiser(nn.Module):
    """(z (n, D), features (n, D), gamma (n, 1)) -> (n, D, out): an MLP with FiLM-free time input."""

    def __init__(self, dim: int, out: int, hidden: int, depth: int, dropout: float, embed: int = 32) -> None:
        super().__init__()
        self.dim, self.out, self.embed = dim, out, embed
        layers: list[nn.Module] = [nn.Linear(2 * dim + embed, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, dim * out)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, z: torch.Tensor, features: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, features, fourier(gamma, self.embed)], -1)
        return self.head(self.body(h)).reshape(-1, self.dim, self.out)


class _Block(nn.Module):
    def __init__(self, channels: int, embed: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(embed, 2 * channels)
        self.norm2 = nn.GroupNorm(8, channels)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        a = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        a = self.norm2(a) * (1 + scale) + shift
        return h + self.conv2(self.drop(F.silu(a)))


class ConvDenoiser(nn.Module):
    """The same map for (h, w, c) images (rows channels-last): residual 3x3 convolutions, time by
    FiLM per block; each value's ``out`` numbers come from its pixel's head."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        out: int,
        channels: int,
        blocks: int,
        dropout: float,
        embed: int = 64,
    ) -> None:
        super().__init__()
        self.shape, self.out, self.embed = shape, out, embed
        self.dim = shape[0] * shape[1] * shape[2]
        self.inp = nn.Conv2d(2 * shape[2], channels, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(embed, embed), nn.SiLU(), nn.Linear(embed, embed))
        self.blocks = nn.ModuleList(_Block(channels, embed, dropout) for _ in range(blocks))
        self.norm = nn.GroupNorm(8, channels)
        self.head = nn.Conv2d(channels, shape[2] * out, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, z: torch.Tensor, features: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        height, width, c = self.shape
        # (n, h, w, c) rows to (n, 2c, h, w): z's channels, then the features'; with one channel
        # this is the stack of the two.
        planes = torch.cat([z.reshape(-1, height, width, c), features.reshape(-1, height, width, c)], 3)
        h = self.inp(planes.permute(0, 3, 1, 2))
        e = self.time(fourier(gamma, self.embed))
        for block in self.blocks:
            h = block(h, e)
        h = self.head(F.silu(self.norm(h))).reshape(-1, c, self.out, height, width)
        return h.permute(0, 3, 4, 1, 2).reshape(-1, self.dim, self.out)


class Diffusion(nn.Module):
    """The schedule, the denoiser and the three pieces of the bound; one sampling step."""

    def __init__(
        self,
        network: nn.Module,
        dim: int,
        levels: int | None,
        gamma_min: float,
        gamma_max: float,
        bound_steps: int,
        predict: str = "levels",
    ) -> None:
        super().__init__()
        self.network = network
        self.dim, self.levels = dim, levels
        # "levels": a categorical over the levels (discrete data); "epsilon": the noise itself
        # (continuous data, and the plain parameterisation kept on discrete data to compare).
        self.predict = predict if levels else "epsilon"
        self.gamma_min, self.gamma_max, self.bound_steps = gamma_min, gamma_max, bound_steps
        # Continuous data is standardised with these; discrete data maps levels onto [-1, 1].
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if levels:
            self.register_buffer("centres", torch.linspace(-1.0, 1.0, levels))

    # -- units -------------------------------------------------------------------------
    def scale(self, x: torch.Tensor) -> torch.Tensor:
        if self.levels:
            return x * (2.0 / (self.levels - 1)) - 1.0
        return (x - self.mean) / self.std

    def log_jacobian(self) -> torch.Tensor:
        """log |d scaled / d x| per row: 0 for levels (a mass), -sum log std for densities."""
        return -torch.log(self.std).sum() if not self.levels else torch.zeros(())

    # -- schedule ----------------------------------------------------------------------
    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    @staticmethod
    def alpha_sigma(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # sigmoid spelled with Exp: ONNX Runtime's Sigmoid kernel is an approximation whose
        # relative error grows in the tails, and sigma_0^2 = sigmoid(-13.3) came out 1.5% off
        # (0.015 nats in log sigma_0 on a 2-D toy, past the export's parity tolerance).
        return torch.rsqrt(1.0 + torch.exp(gamma)), torch.rsqrt(1.0 + torch.exp(-gamma))

    # -- denoiser ----------------------------------------------------------------------
    def level_logits(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """(n, D, L): log N(z_i; alpha c_l, sigma^2) up to a constant per (row, dim)."""
        alpha, sigma = self.alpha_sigma(gamma)
        diff = z[..., None] - alpha[..., None] * self.centres
        return -0.5 * diff**2 / (sigma**2)[..., None]

    def denoise(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """x_hat(z_t) in scaled units, (n, D); ``gamma`` is (n, 1)."""
        alpha, sigma = self.alpha_sigma(gamma)
        if self.predict == "levels":
            evidence = self.level_logits(z, gamma)
            rounded = (F.softmax(evidence, -1) * self.centres).sum(-1)
            logits = evidence + self.network(z, rounded, gamma)
            return (F.softmax(logits, -1) * self.centres).sum(-1)
        eps_hat = self.network(z, z, gamma)[..., 0]
        return (z - sigma * eps_hat) / alpha

    # -- the bound ---------------------------------------------------------------------
    def prior_kl(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z_1 | x) || N(0, I)) per row, in nats."""
        g = torch.full_like(x[:, :1], self.gamma_max)
        alpha, sigma = self.alpha_sigma(g)
        var = sigma**2
        return 0.5 * ((alpha * x) ** 2 + var - 1.0 - torch.log(var)).sum(-1)

    def reconstruction(self, x: torch.Tensor, eps0: torch.Tensor) -> torch.Tensor:
        """log p(x | z_0) per row for one draw z_0 = alpha_0 x + sigma_0 eps0 (scaled units)."""
        g = torch.full_like(x[:, :1], self.gamma_min)
        alpha, sigma = self.alpha_sigma(g)
        z0 = alpha * x + sigma * eps0
        if self.levels:
            log_p = F.log_softmax(self.level_logits(z0, g), -1)
            idx = torch.round((x + 1.0) * (self.levels - 1) / 2.0).clamp(0, self.levels - 1).long()
            return torch.gather(log_p, -1, idx[..., None])[..., 0].sum(-1)
        # p(x | z_0) = N(x; z_0 / alpha_0, (sigma_0 / alpha_0)^2), at x: its standardised
        # residual is -eps0, whose E ||eps0||^2 = D is used in place of the draw (the same
        # expectation, none of the chi-square noise that dominated one draw's spread).
        s = sigma[:, 0] / alpha[:, 0]
        return self.dim * (-0.5 - torch.log(s) - 0.5 * LOG_2PI)

    def diffusion_loss(self, x: torch.Tensor, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The T-step diffusion term per row, estimated at M stratified steps.

        ``u`` (n, M) uniforms pick step i_m in the m-th of M equal strata of 1..T; ``eps``
        (n, M * D) the noise of each. The mean over the M strata is unbiased for
        (T / 2) E_i (SNR(s) - SNR(t)) ||x - x_hat(z_t)||^2.
        """
        n, m = u.shape
        T = self.bound_steps
        if T % m:
            # Equal strata only: with a remainder the last steps would never be drawn.
            raise ValueError(f"{m} strata do not divide the bound's {T} steps")
        per = T // m
        strata = torch.arange(m, device=u.device, dtype=u.dtype) * per
        # Step index 1..T in stratum m: m T/M + floor(u T/M) + 1. One correctly rounded multiply
        # before the floor, so ONNX Runtime and PyTorch pick the same step (a longer formula
        # put a row on the other side of a step boundary and failed the parity check).
        i = strata + torch.clamp(torch.floor(u * per), 0.0, float(per - 1)) + 1.0
        t = (i / T).reshape(-1, 1)
        g_t = self.gamma(t)
        xr = x.repeat_interleave(m, 0)
        e = eps.reshape(n * m, self.dim)
        alpha, sigma = self.alpha_sigma(g_t)
        z = alpha * xr + sigma * e
        # SNR(s) - SNR(t) = SNR(t) (exp(g_t - g_s) - 1), and SNR(t) ||x - x_hat||^2 is
        # ||eps - eps_hat||^2: the error is taken where it is computed without cancellation.
        if self.predict == "levels":
            err = torch.exp(-g_t)[:, 0] * ((xr - self.denoise(z, g_t)) ** 2).sum(-1)
        else:
            # ||eps - eps_hat||^2 with ||eps||^2 replaced by its expectation D: unbiased for the
            # same bound, without the chi-square noise of the low-noise steps, where eps_hat is
            # near 0 and each step added D +- sqrt(2D) times a weight of about 9 nats.
            eps_hat = self.network(z, z, g_t)[..., 0]
            err = self.dim - 2.0 * (e * eps_hat).sum(-1) + (eps_hat**2).sum(-1)
        # g_t - g_s is the constant (gamma_max - gamma_min) / T of a linear schedule: taken in
        # double precision here, since the difference of two float32 gammas near 13 carried a
        # 1e-4 relative error that ONNX Runtime and PyTorch did not share.
        per_step = 0.5 * T * math.expm1((self.gamma_max - self.gamma_min) / T) * err
        return per_step.reshape(n, m).mean(1)

    def bound(self, x: torch.Tensor, u: torch.Tensor, eps: torch.Tensor, eps0: torch.Tensor) -> torch.Tensor:
        """One unbiased estimate per row of the lower bound on log P(x) (nats; data units in)."""
        xs = self.scale(x)
        return (
            self.reconstruction(xs, eps0)
            - self.prior_kl(xs)
            - self.diffusion_loss(xs, u, eps)
            + self.log_jacobian()
        )

    # -- sampling ----------------------------------------------------------------------
    def step(
        self,
        state: torch.Tensor,
        step: torch.Tensor,
        steps: torch.Tensor,
        eps: torch.Tensor,
        z1: torch.Tensor,
        dec: torch.Tensor,
    ) -> torch.Tensor:
        """One ancestral step of an S-step sampler: step j of S goes from t = (S - j)/S to s.

        Step 0 starts from z_1 = ``z1`` (the state is ignored); the last step (s = 0) returns a
        draw of p(x | z_0) in data units made from ``dec``. Each is its own draw, so one step
        (S = 1, first and last at once) samples the 1-step model too.
        """
        S = steps.to(state.dtype)
        j = step.to(state.dtype)
        first, last = step == 0, step == steps - 1
        z = torch.where(first, z1, state)
        g_t, g_s = self.gamma((S - j) / S), self.gamma((S - j - 1.0) / S)
        alpha_t, _ = self.alpha_sigma(g_t)
        alpha_s, sigma_s = self.alpha_sigma(g_s)
        x_hat = self.denoise(z, g_t)
        # q(z_s | z_t, x): c = 1 - SNR(t)/SNR(s) = 1 - exp(-(gamma_max - gamma_min) / S), the
        # same for every step of a linear schedule (and exact, unlike a difference of gammas);
        # mean alpha_s ((1 - c) z_t / alpha_t + c x), variance c sigma_s^2.
        c = 1.0 - torch.exp(-(self.gamma_max - self.gamma_min) / S)
        z_s = alpha_s * ((1.0 - c) * z / alpha_t + c * x_hat) + torch.sqrt(c) * sigma_s * eps
        return torch.where(last, self.decode(z_s, g_s, dec), z_s)

    def decode(self, z0: torch.Tensor, g0: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """A draw of p(x | z_0) in data units from standard normals ``e``."""
        alpha, sigma = self.alpha_sigma(g0)
        if self.levels:
            # Inverse CDF of each dimension's categorical at u = Phi(e).
            probs = F.softmax(self.level_logits(z0, g0), -1)
            u = 0.5 * (1.0 + torch.erf(e / math.sqrt(2.0)))
            below = (torch.cumsum(probs, -1) < u[..., None]).to(z0.dtype).sum(-1)
            return torch.clamp(below, 0.0, float(self.levels - 1))
        return (z0 / alpha + sigma / alpha * e) * self.std + self.mean

    def sample(self, noise: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
        """The PyTorch reference of the runtime's loop: ``noise`` arrays are (steps, n, D)."""
        n = noise["eps"].shape[1]
        state = torch.zeros(n, self.dim)
        total = torch.full((n, 1), steps, dtype=torch.int64)
        for j in range(steps):
            step = torch.full((n, 1), j, dtype=torch.int64)
            state = self.step(state, step, total, noise["eps"][j], noise["z1"][j], noise["dec"][j])
        return state
