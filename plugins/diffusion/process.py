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

At 256 levels a categorical per value is 256 outputs per value (786,432 per 32x32x3 row, at every
step drawn). ``predict="gaussian"`` keeps the exact evidence and asks the network for two numbers
per value: a noise prediction, which gives a continuous estimate m = (z_t - sigma_t eps_hat) /
alpha_t, and the log of that estimate's precision relative to the evidence's (SNR). The denoiser
is the mean over the lattice of levels with weights N(c_l; m, 1 / (SNR e^rho)), taken over the
``window`` levels around m: at low noise that is rounding (no network output can do it at scale
sigma_t), at high noise the window's mean is m's to a fraction of a level. A zero head is the
evidence alone. (A guess in data units with an absolute precision learned no better in 150 s on
patches-rgb: 6.73 bits/dim against 6.67, on a U-Net whose speed, not its output, then turned out
to be what held both back.) (n, D, 16) work in place of (n, D, 256); the denoiser may be any
function of z_t: the bound stays a bound whatever it computes.

A conditional diffusion (``classes`` K) is p(x|y): the denoiser also takes the label, and the
bound above holds for each label as it stands (the network is any function of z_t and y), so a
scorer of label y is an unbiased estimate of the bound on log P(x|y), and of label K (the null
class of classifier-free guidance) of the bound on the unconditional model's log P(x). Sampling
may be guided: the step's noise prediction is eps(z, null) + w (eps(z, y) - eps(z, null)).

The networks are in :mod:`plugins.diffusion.model`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LOG_2PI = math.log(2 * math.pi)
WINDOW = 16  # predict="gaussian": levels summed around the posterior's mean
# predict="gaussian": the decoder p(x | z_0) is (1 - MIX) x a categorical over the WINDOW levels
# around z_0 / alpha_0, plus MIX x uniform over all levels: normalised for every z_0, exact to
# score from the window alone, and never -inf (MIX costs at most -log(1 - MIX) nats a value).
MIX = 1e-6


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
        classes: int | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        # p(x|y) with labels 0..classes-1, and `classes` itself the null label (the unconditional
        # model the same network learned by label dropout); None: an unconditional model.
        self.classes = classes
        self.dim, self.levels = dim, levels
        # "levels": a categorical over the levels; "gaussian": a Gaussian guess times the evidence,
        # on the lattice (discrete data; see the module's docstring); "epsilon": the noise itself
        # (continuous data, and the plain parameterisation kept on discrete data to compare).
        self.predict = predict if levels else "epsilon"
        self.window = min(WINDOW, levels or 1)
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

    def lattice(
        self, m: torch.Tensor, precision: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``window`` levels around m (inside 0..L-1) and their weights N(c_l; m, 1 / precision):
        (index (n, D, K) as floats, c (n, D, K) in scaled units, log weights (n, D, K) unnormalised).
        ``m`` is (n, D) in scaled units; ``precision`` broadcasts to it."""
        levels, k = self.levels, self.window
        position = (m + 1.0) * ((levels - 1) / 2.0)
        first = torch.clamp(torch.floor(position) - (k // 2 - 1), 0.0, float(levels - k))
        index = first[..., None] + torch.arange(k, device=m.device, dtype=m.dtype)
        c = index * (2.0 / (levels - 1)) - 1.0
        return index, c, -0.5 * precision[..., None] * (c - m[..., None]) ** 2

    def lattice_mean(self, m: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        """The mean of c over :meth:`lattice`'s window and weights, (n, D)."""
        _, c, logits = self.lattice(m, precision)
        return (F.softmax(logits, -1) * c).sum(-1)

    def net(
        self, z: torch.Tensor, features: torch.Tensor, gamma: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        """The network's numbers, given the label where there is one (an unconditional network,
        or a stand-in of the tests, takes three inputs)."""
        return self.network(z, features, gamma) if y is None else self.network(z, features, gamma, y)

    def denoise(self, z: torch.Tensor, gamma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x_hat(z_t) in scaled units, (n, D); ``gamma`` is (n, 1), ``y`` (n, 1) labels or None."""
        alpha, sigma = self.alpha_sigma(gamma)
        if self.predict == "gaussian":
            snr = torch.exp(-gamma)  # the evidence's precision about x: alpha^2 / sigma^2
            rounded = self.lattice_mean(z / alpha, snr)
            out = self.net(z, rounded, gamma, y)
            # A noise prediction gives the continuous estimate, the second output the log of its
            # precision relative to the evidence's; both 0 (a zero head) is evidence alone.
            return self.lattice_mean((z - sigma * out[..., 0]) / alpha, snr * torch.exp(out[..., 1]))
        if self.predict == "levels":
            evidence = self.level_logits(z, gamma)
            rounded = (F.softmax(evidence, -1) * self.centres).sum(-1)
            logits = evidence + self.net(z, rounded, gamma, y)
            return (F.softmax(logits, -1) * self.centres).sum(-1)
        eps_hat = self.net(z, z, gamma, y)[..., 0]
        return (z - sigma * eps_hat) / alpha

    def guided_denoise(
        self, z: torch.Tensor, gamma: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """Classifier-free guidance: x_hat of eps(z, null) + w (eps(z, y) - eps(z, null)).

        eps_hat = (z - alpha x_hat) / sigma is affine in x_hat with the same z for both
        predictions, so mixing the two x_hat with weights (1 - w, w) is exactly mixing their
        noise predictions: the one formula for every parameterisation (levels, gaussian,
        epsilon). Both predictions come from one network call on the rows stacked twice (the
        labels, then the null class): one pass of twice the batch, not two passes.
        """
        null = torch.full_like(y, self.classes)
        both = self.denoise(torch.cat([z, z]), torch.cat([gamma, gamma]), torch.cat([y, null]))
        # chunk, not both[:len(z)]: a traced len() would fix the exported graph's batch size.
        conditional, unconditional = both.chunk(2)
        return unconditional + w * (conditional - unconditional)

    # -- the bound ---------------------------------------------------------------------
    def prior_kl(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z_1 | x) || N(0, I)) per row, in nats."""
        g = torch.full_like(x[:, :1], self.gamma_max)
        alpha, sigma = self.alpha_sigma(g)
        var = sigma**2
        return 0.5 * ((alpha * x) ** 2 + var - 1.0 - torch.log(var)).sum(-1)

    def decoder_window(self, z0: torch.Tensor, g0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """predict="gaussian"'s decoder p(x | z_0) outside its uniform share: the window of levels
        around z_0 / alpha_0 and their logits (the evidence), as (index, logits), each (n, D, K).
        The one definition that :meth:`reconstruction` scores and :meth:`decode` draws."""
        alpha, _ = self.alpha_sigma(g0)
        index, _, logits = self.lattice(z0 / alpha, torch.exp(-g0))
        return index, logits

    def reconstruction(self, x: torch.Tensor, eps0: torch.Tensor) -> torch.Tensor:
        """log p(x | z_0) per row for one draw z_0 = alpha_0 x + sigma_0 eps0 (scaled units)."""
        g = torch.full_like(x[:, :1], self.gamma_min)
        alpha, sigma = self.alpha_sigma(g)
        z0 = alpha * x + sigma * eps0
        if self.predict == "gaussian":
            index, logits = self.decoder_window(z0, g)
            target = torch.round((x + 1.0) * (self.levels - 1) / 2.0)
            inside = (F.softmax(logits, -1) * (index == target[..., None]).to(x.dtype)).sum(-1)
            return torch.log((1.0 - MIX) * inside + MIX / self.levels).sum(-1)
        if self.levels:
            log_p = F.log_softmax(self.level_logits(z0, g), -1)
            idx = torch.round((x + 1.0) * (self.levels - 1) / 2.0).clamp(0, self.levels - 1).long()
            return torch.gather(log_p, -1, idx[..., None])[..., 0].sum(-1)
        # p(x | z_0) = N(x; z_0 / alpha_0, (sigma_0 / alpha_0)^2), at x: its standardised
        # residual is -eps0, whose E ||eps0||^2 = D is used in place of the draw (the same
        # expectation, none of the chi-square noise that dominated one draw's spread).
        s = sigma[:, 0] / alpha[:, 0]
        return self.dim * (-0.5 - torch.log(s) - 0.5 * LOG_2PI)

    def diffusion_loss(
        self, x: torch.Tensor, u: torch.Tensor, eps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The T-step diffusion term per row, estimated at M stratified steps (given label ``y``).

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
        yr = None if y is None else y.repeat_interleave(m, 0)
        e = eps.reshape(n * m, self.dim)
        alpha, sigma = self.alpha_sigma(g_t)
        z = alpha * xr + sigma * e
        # SNR(s) - SNR(t) = SNR(t) (exp(g_t - g_s) - 1), and SNR(t) ||x - x_hat||^2 is
        # ||eps - eps_hat||^2: the error is taken where it is computed without cancellation.
        if self.predict != "epsilon":
            err = torch.exp(-g_t)[:, 0] * ((xr - self.denoise(z, g_t, yr)) ** 2).sum(-1)
        else:
            # ||eps - eps_hat||^2 with ||eps||^2 replaced by its expectation D: unbiased for the
            # same bound, without the chi-square noise of the low-noise steps, where eps_hat is
            # near 0 and each step added D +- sqrt(2D) times a weight of about 9 nats.
            eps_hat = self.net(z, z, g_t, yr)[..., 0]
            err = self.dim - 2.0 * (e * eps_hat).sum(-1) + (eps_hat**2).sum(-1)
        # g_t - g_s is the constant (gamma_max - gamma_min) / T of a linear schedule: taken in
        # double precision here, since the difference of two float32 gammas near 13 carried a
        # 1e-4 relative error that ONNX Runtime and PyTorch did not share.
        per_step = 0.5 * T * math.expm1((self.gamma_max - self.gamma_min) / T) * err
        return per_step.reshape(n, m).mean(1)

    def bound(
        self,
        x: torch.Tensor,
        u: torch.Tensor,
        eps: torch.Tensor,
        eps0: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One unbiased estimate per row of the lower bound on log P(x) (nats; data units in),
        or on log P(x|y) given labels ``y`` (n, 1) (the null class: the unconditional model's).
        Only the diffusion term sees the label: the prior and the decoder are the schedule's."""
        xs = self.scale(x)
        return (
            self.reconstruction(xs, eps0)
            - self.prior_kl(xs)
            - self.diffusion_loss(xs, u, eps, y)
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
        y: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One ancestral step of an S-step sampler: step j of S goes from t = (S - j)/S to s.

        Step 0 starts from z_1 = ``z1`` (the state is ignored); the last step (s = 0) returns a
        draw of p(x | z_0) in data units made from ``dec``. Each is its own draw, so one step
        (S = 1, first and last at once) samples the 1-step model too. A conditional model's
        step takes labels ``y`` (n, 1), and with ``guidance`` w (n, 1) the guided prediction
        (:meth:`guided_denoise`): w = 0 the unconditional model, 1 the conditional one.
        """
        S = steps.to(state.dtype)
        j = step.to(state.dtype)
        first, last = step == 0, step == steps - 1
        z = torch.where(first, z1, state)
        g_t, g_s = self.gamma((S - j) / S), self.gamma((S - j - 1.0) / S)
        alpha_t, _ = self.alpha_sigma(g_t)
        alpha_s, sigma_s = self.alpha_sigma(g_s)
        if y is not None and guidance is not None:
            x_hat = self.guided_denoise(z, g_t, y, guidance)
        else:
            x_hat = self.denoise(z, g_t, y)
        # q(z_s | z_t, x): c = 1 - SNR(t)/SNR(s) = 1 - exp(-(gamma_max - gamma_min) / S), the
        # same for every step of a linear schedule (and exact, unlike a difference of gammas);
        # mean alpha_s ((1 - c) z_t / alpha_t + c x), variance c sigma_s^2.
        c = 1.0 - torch.exp(-(self.gamma_max - self.gamma_min) / S)
        z_s = alpha_s * ((1.0 - c) * z / alpha_t + c * x_hat) + torch.sqrt(c) * sigma_s * eps
        return torch.where(last, self.decode(z_s, g_s, dec), z_s)

    def decode(self, z0: torch.Tensor, g0: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """A draw of p(x | z_0) in data units from standard normals ``e``."""
        alpha, sigma = self.alpha_sigma(g0)
        u = 0.5 * (1.0 + torch.erf(e / math.sqrt(2.0)))
        if self.predict == "gaussian":
            # The mixture of the reconstruction's decoder from one uniform u: u < MIX picks the
            # uniform part (its level from u / MIX), otherwise the window's inverse CDF at the rest.
            index, logits = self.decoder_window(z0, g0)
            v = (u - MIX) / (1.0 - MIX)
            below = (torch.cumsum(F.softmax(logits, -1), -1) < v[..., None]).to(z0.dtype).sum(-1)
            windowed = index[..., 0] + torch.clamp(below, 0.0, float(self.window - 1))
            uniform = torch.clamp(torch.floor(u / MIX * self.levels), 0.0, float(self.levels - 1))
            return torch.where(u < MIX, uniform, windowed)
        if self.levels:
            # Inverse CDF of each dimension's categorical at u = Phi(e).
            probs = F.softmax(self.level_logits(z0, g0), -1)
            below = (torch.cumsum(probs, -1) < u[..., None]).to(z0.dtype).sum(-1)
            return torch.clamp(below, 0.0, float(self.levels - 1))
        return (z0 / alpha + sigma / alpha * e) * self.std + self.mean

    def sample(self, noise: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
        """The PyTorch reference of the runtime's loop: ``noise`` arrays are (steps, n, D); a
        conditional model's labels "y" (n, 1) and guidance scale "guidance" (n, 1), where
        given, are the same at every step."""
        n = noise["eps"].shape[1]
        state = torch.zeros(n, self.dim)
        total = torch.full((n, 1), steps, dtype=torch.int64)
        y, w = noise.get("y"), noise.get("guidance")
        for j in range(steps):
            step = torch.full((n, 1), j, dtype=torch.int64)
            state = self.step(state, step, total, noise["eps"][j], noise["z1"][j], noise["dec"][j], y, w)
        return state
