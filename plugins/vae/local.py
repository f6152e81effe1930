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
the decoder mean takes (H + W - 1) x C steps, one for each (anti-diagonal, channel), each
computing its own values from the few earlier steps they read (gathers planned once per shape,
unrolled into the exported graph: 189 steps at 32x32x3).

The same parameters for every component: the coupling moves all of a value's components
together, so a component's weight does not depend on the context and one uniform per value picks
the component and inverts its CDF (as plugins.vae.likelihood.Logistic).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from plugins.common.logistic import choose_component, log_mass, sample_level

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
        self._plan()

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

    def _source(self, value: int, slot: int) -> int:
        """The value that coefficient ``slot`` of ``value`` reads, or -1 for none (an unused
        channel slot, a neighbour outside the image)."""
        _, w, c = self.shape
        i, j, ch = value // (w * c), (value // c) % w, value % c
        if slot < c - 1:
            return value - ch + slot if slot < ch else -1
        dy, dx = NEIGHBOURS[slot - (c - 1)]
        return ((i - dy) * w + (j - dx)) * c + ch if i >= dy and j >= dx else -1

    def _plan(self) -> None:
        """Per step of the draw (``self.plan``): the range [start, end) its values take in the
        step-ordered row, the earlier steps it reads, and for each of its values and coefficients
        the place of the value read in [a middle-level pad, those steps' values...] (0, the pad,
        for no value); and the row's values in step order (``_rank``) and back (``_position``)."""
        order = self.order.tolist()
        rank = sorted(range(len(order)), key=lambda v: order[v])  # the values in step order
        position = [0] * len(order)
        for place, v in enumerate(rank):
            position[v] = place
        bounds = [0] * (self.steps + 1)
        for step in order:
            bounds[step + 1] += 1
        for step in range(self.steps):
            bounds[step + 1] += bounds[step]
        plan = []
        for step in range(self.steps):
            start, end = bounds[step], bounds[step + 1]
            sources = [[self._source(v, slot) for slot in range(self.coefficients)] for v in rank[start:end]]
            reads = sorted({order[v] for row in sources for v in row if v >= 0})
            base, size = {}, 1
            for earlier in reads:
                base[earlier], size = size, size + bounds[earlier + 1] - bounds[earlier]
            local = [
                [base[order[v]] + position[v] - bounds[order[v]] if v >= 0 else 0 for v in row]
                for row in sources
            ]
            plan.append((start, end, reads, torch.tensor(local, dtype=torch.int64)))
        self.plan = plan
        self._rank, self._position = torch.tensor(rank), torch.tensor(position)

    def in_order(self, t: torch.Tensor) -> torch.Tensor:
        """(n, D, ...) per-value numbers rearranged into the draw's step order."""
        return t[:, self._rank.to(t.device)]

    def _unroll(self, coef: torch.Tensor, value) -> torch.Tensor:
        """Fill the row step by step. Each step computes its own values only: ``value(shift,
        start, end)`` for the values at [start, end) of the step-ordered row, its shift read from
        the few earlier steps it depends on (the pixel's earlier channels, the previous two
        anti-diagonals). The same numbers as :meth:`context` on the whole row at each step, at a
        step's share of the work (measured in RESULTS.md)."""
        ordered = self.in_order(coef)
        middle = torch.full((coef.shape[0], 1), (self.levels - 1) / 2, dtype=coef.dtype, device=coef.device)
        parts: list[torch.Tensor] = []
        for start, end, reads, local in self.plan:
            window = torch.cat([middle, *(parts[s] for s in reads)], -1) - (self.levels - 1) / 2
            read = window[:, local.reshape(-1).to(coef.device)].reshape(-1, end - start, self.coefficients)
            parts.append(value((ordered[:, start:end] * read).sum(-1), start, end))
        return torch.cat(parts, -1)[:, self._position.to(coef.device)]

    def mean(self, params: Params) -> torch.Tensor:
        """Value by value in the draw's order, the weighted location given the earlier values'
        means, clipped to the levels' range (unrounded, as the other decoders' means)."""
        log_w, loc, _, coef = params
        centre = self.in_order(loc[..., 0] if self.components == 1 else (torch.exp(log_w) * loc).sum(-1))
        return self._unroll(
            coef, lambda shift, a, b: torch.clamp(centre[:, a:b] + shift, 0.0, self.levels - 1.0)
        )

    def sample(self, params: Params, u: torch.Tensor) -> torch.Tensor:
        """An exact draw from p(x|z), value by value, one uniform u each (component and level)."""
        log_w, loc, log_scale, coef = params
        if self.components == 1:
            inner, pick_loc, pick_scale = u, loc[..., 0], log_scale[..., 0]
        else:
            k, inner = choose_component(log_w, u)
            pick_loc = torch.gather(loc, -1, k)[..., 0]
            pick_scale = torch.gather(log_scale, -1, k)[..., 0]
        inner, pick_loc, pick_scale = (self.in_order(t) for t in (inner, pick_loc, pick_scale))
        return self._unroll(
            coef,
            lambda shift, a, b: sample_level(
                inner[:, a:b], pick_loc[:, a:b] + shift, pick_scale[:, a:b], self.levels
            ),
        )
