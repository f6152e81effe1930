"""A local autoregressive image decoder for the VAE: p(x|z) as a product of per-value conditionals.

Independent per-value logistics given z pay, for every value, the full entropy of the detail the
latent does not carry, although that detail is shared by a pixel's channels and by neighbouring
pixels (a lossless codec's whole trick: PNG predicts a pixel from its left, upper and upper-left
neighbours). This decoder keeps the VAE's one pass and adds that prediction: value (i, j, c)
is a mixture of discretised logistics whose location, beside the network's own, moves linearly
with

- the pixel's earlier channels (c' < c), as PixelCNN++'s within-pixel coupling, and
- the same channel at the left (i, j-1), upper (i-1, j) and upper-left (i-1, j-1) pixels,

with coefficients the network answers per value from z (so where the image is smooth and how it
is shaded is the latent's to say). A value's coefficients have an absolute sum of at most 1
(scaled down onto that ball when above): the decoder mean runs the coupling as a recursion over
(H + W - 1) x C steps, which such a predictor cannot amplify, so float error (ONNX Runtime's
against PyTorch's) grows at most by a step's own each step. Unbounded, an 8x8 image's mean
already differed by more than parity allows; every value is still free to follow one neighbour
or channel fully, or to average several. Every value conditions only on values earlier in the order
(anti-diagonal i + j, then channel), so the product of the conditionals is a normalised p(x|z)
and the ELBO stays a true bound. Scoring is one pass (the neighbours are shifts of x); a draw or
the decoder mean takes (H + W - 1) x C steps, one for each (anti-diagonal, channel), each over
the whole image (plain tensor ops, unrolled into the exported graph: 189 steps at 32x32x3).

The same parameters for every component: the coupling moves all of a value's components
together, so a component's weight does not depend on the context and one uniform per value picks
the component and inverts its CDF (as plugins.vae.likelihood.Logistic).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from plugins.common.logistic import log_mass, sample_level

Params = tuple[torch.Tensor, ...]

# The spatial neighbours a value's location reads, as (row, column) offsets: left, up, up-left.
NEIGHBOURS = ((0, 1), (1, 0), (1, 1))


class LocalLogistic:
    """A mixture of ``components`` discretised logistics per value of an image ``shape`` (H, W, C)
    at ``levels``, coupled to the earlier channels and the left, upper and upper-left pixels."""

    LOG_SCALE = (-5.0, 7.0)  # as plugins.vae.likelihood.Logistic's, in level units

    def __init__(self, levels: int, shape: tuple[int, int, int], components: int = 1) -> None:
        self.levels, self.shape, self.components = levels, shape, components
        h, w, c = shape
        self.coefficients = (c - 1) + len(NEIGHBOURS)
        self.per = 2 * components + (components if components > 1 else 0) + self.coefficients
        # step of each value in the draw's order: anti-diagonal first, then channel
        i, j, ch = torch.meshgrid(torch.arange(h), torch.arange(w), torch.arange(c), indexing="ij")
        self.order = ((i + j) * c + ch).reshape(-1)
        # which coefficients a value uses: its earlier channels' and every neighbour's
        slot = torch.arange(self.coefficients)
        self.used = ((slot < ch.reshape(-1, 1)) | (slot >= c - 1)).to(torch.float32)  # (D, coefficients)
        self.steps = (h + w - 1) * c

    def split(self, raw: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> Params:
        """(log weights, locations, log-scales) (n, D, K) in level units, coefficients (n, D, coefficients)."""
        k = self.components
        loc = centre[..., None] + raw[..., :k] * scale[..., None]
        log_scale = torch.clamp(raw[..., k : 2 * k] + torch.log(scale)[..., None], *self.LOG_SCALE)
        log_w = torch.zeros_like(loc) if k == 1 else F.log_softmax(raw[..., 2 * k : 3 * k], dim=-1)
        coef = raw[..., -self.coefficients :] * self.used.to(raw)
        coef = coef / torch.clamp(coef.abs().sum(-1, keepdim=True), min=1.0)
        return log_w, loc, log_scale, coef

    def context(self, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """The location shift (n, D) of every value given the row x (n, D): the coefficients times
        the earlier channels' and the neighbours' values (centred on the middle level; a neighbour
        outside the image counts as the middle)."""
        h, w, c = self.shape
        centred = (x - (self.levels - 1) / 2).reshape(-1, h, w, c)
        coef = coef.reshape(-1, h, w, c, self.coefficients)
        shift = torch.zeros_like(centred)
        for later in range(1, c):
            for earlier in range(later):
                term = coef[..., later, earlier] * centred[..., earlier]
                shift = shift + F.pad(term[..., None], (later, c - later - 1))
        for n, (dy, dx) in enumerate(NEIGHBOURS):
            # (n, h, w, c) moved down by dy rows and right by dx columns, zeros coming in
            moved = F.pad(centred, (0, 0, dx, 0, dy, 0))[:, :h, :w, :]
            shift = shift + coef[..., c - 1 + n] * moved
        return shift.reshape(x.shape)

    def log_likelihood(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        log_w, loc, log_scale, coef = params
        at = loc + self.context(x, coef)[..., None]
        mass = log_mass(x[..., None], at, log_scale, self.levels)
        per_value = mass[..., 0] if self.components == 1 else torch.logsumexp(log_w + mass, -1)
        return per_value.sum(-1)

    def _unroll(self, coef: torch.Tensor, value) -> torch.Tensor:
        """Fill the row step by step: at step s every value is recomputed from the row so far
        (``value(shift)``), and those of step s are kept; the earlier ones stay as they were."""
        x = torch.zeros(coef.shape[:-1], dtype=coef.dtype, device=coef.device)
        order = self.order.to(coef.device)
        for step in range(self.steps):
            x = torch.where(order == step, value(self.context(x, coef)), x)
        return x

    def mean(self, params: Params) -> torch.Tensor:
        """Value by value in the draw's order, the weighted location given the earlier values'
        means, clipped to the levels' range (unrounded, as the other decoders' means)."""
        log_w, loc, _, coef = params
        centre = loc[..., 0] if self.components == 1 else (torch.exp(log_w) * loc).sum(-1)
        return self._unroll(coef, lambda shift: torch.clamp(centre + shift, 0.0, self.levels - 1.0))

    def sample(self, params: Params, u: torch.Tensor) -> torch.Tensor:
        """An exact draw from p(x|z), value by value, one uniform u each (component and level)."""
        log_w, loc, log_scale, coef = params
        if self.components == 1:
            inner, pick_loc, pick_scale = u, loc[..., 0], log_scale[..., 0]
        else:
            w = torch.exp(log_w)
            upper = torch.cumsum(w, -1)
            k = (u[..., None] >= upper[..., :-1]).sum(-1, keepdim=True)
            start = torch.gather(upper - w, -1, k)[..., 0]
            inner = torch.clamp((u - start) / torch.gather(w, -1, k)[..., 0], 0.0, 1.0)
            pick_loc = torch.gather(loc, -1, k)[..., 0]
            pick_scale = torch.gather(log_scale, -1, k)[..., 0]
        return self._unroll(
            coef, lambda shift: sample_level(inner, pick_loc + shift, pick_scale, self.levels)
        )
