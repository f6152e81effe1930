"""2-D toy densities generated in code, each with its exact log-density.

The shapes follow FFJORD's toy set; where FFJORD spaces points evenly on a curve we draw the
position uniformly instead, so that the density below is the one the sampler draws from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import i0e, logsumexp


@dataclass(frozen=True)
class Toy:
    name: str
    description: str
    sample: Callable[[int, np.random.Generator], np.ndarray]
    log_density: Callable[[np.ndarray], np.ndarray]


def _gauss2_logpdf(x: np.ndarray, centres: np.ndarray, std: float) -> np.ndarray:
    """log N(x | c, std^2 I) for every row of x (n, 2) and centre c (k, 2) -> (n, k)."""
    d2 = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return -d2 / (2 * std**2) - math.log(2 * math.pi * std**2)


# --- 8 gaussians -------------------------------------------------------------------------
_S = 1 / math.sqrt(2)
EIGHT_CENTRES = (
    np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (_S, _S), (_S, -_S), (-_S, _S), (-_S, -_S)]) * 4.0 / 1.414
)
EIGHT_STD = 0.5 / 1.414


def _eight_sample(n: int, rng: np.random.Generator) -> np.ndarray:
    k = rng.integers(0, 8, n)
    return EIGHT_CENTRES[k] + rng.normal(size=(n, 2)) * EIGHT_STD


def _eight_logp(x: np.ndarray) -> np.ndarray:
    return logsumexp(_gauss2_logpdf(x, EIGHT_CENTRES, EIGHT_STD), axis=1) - math.log(8)


# --- checkerboard: uniform on 8 of the 16 2x2 cells of [-4, 4)^2 -----------------------------
def _checker_sample(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2


def _checker_logp(x: np.ndarray) -> np.ndarray:
    u, v = x[:, 0] / 2, x[:, 1] / 2
    inside = (u >= -2) & (u < 2) & (v >= -2) & (v < 2)
    lit = (np.floor(u) - np.floor(v)) % 2 == 0
    return np.where(inside & lit, -math.log(32.0), -np.inf)


# --- rings: 4 concentric circles, radii 3, 2.25, 1.5, 0.75, radial noise 0.08 --------------
RING_RADII = np.array([0.75, 1.5, 2.25, 3.0])
RING_STD = 0.08


def _rings_sample(n: int, rng: np.random.Generator) -> np.ndarray:
    radius = RING_RADII[rng.integers(0, 4, n)]
    angle = rng.random(n) * 2 * math.pi
    pts = np.stack([np.cos(angle), np.sin(angle)], 1) * radius[:, None]
    return pts + rng.normal(size=(n, 2)) * RING_STD


def _rings_logp(x: np.ndarray) -> np.ndarray:
    # A circle of radius R blurred by N(0, s^2 I) has density
    # exp(-(r^2 + R^2) / 2s^2) I0(r R / s^2) / (2 pi s^2); i0e keeps the Bessel term finite.
    r = np.linalg.norm(x, axis=1)[:, None]
    big_r = RING_RADII[None, :]
    a = r * big_r / RING_STD**2
    log_ring = -((r - big_r) ** 2) / (2 * RING_STD**2) + np.log(i0e(a)) - math.log(2 * math.pi * RING_STD**2)
    return logsumexp(log_ring, axis=1) - math.log(4)


# --- moons: two noisy half circles (as scikit-learn's make_moons), centred and scaled by 2 ----
MOONS_STD = 0.1
MOONS_SHIFT = np.array([0.5, 0.25])
MOONS_SCALE = 2.0
_MOON_T = np.linspace(0.0, math.pi, 513)


def _moon_arcs(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outer = np.stack([np.cos(t), np.sin(t)], -1)
    inner = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], -1)
    return outer, inner


def _moons_sample(n: int, rng: np.random.Generator) -> np.ndarray:
    t = rng.random(n) * math.pi
    outer, inner = _moon_arcs(t)
    pts = np.where((rng.random(n) < 0.5)[:, None], outer, inner)
    pts = pts + rng.normal(size=(n, 2)) * MOONS_STD
    return (pts - MOONS_SHIFT) * MOONS_SCALE


def _moons_logp(x: np.ndarray) -> np.ndarray:
    # The arc position t is uniform on [0, pi]: integrate the Gaussian over it numerically
    # (Simpson's rule on 513 points: the noise is 16x wider than their spacing, so the
    # relative error is about (spacing / noise)^4 ~ 1e-5).
    y = x / MOONS_SCALE + MOONS_SHIFT
    outer, inner = _moon_arcs(_MOON_T)
    arcs = np.concatenate([outer, inner])
    weights = np.ones(len(_MOON_T))
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    log_w = np.log(weights / weights.sum())
    log_w = np.concatenate([log_w, log_w]) - math.log(2)
    out = np.empty(len(y))
    for start in range(0, len(y), 2048):
        chunk = _gauss2_logpdf(y[start : start + 2048], arcs, MOONS_STD)
        out[start : start + 2048] = logsumexp(chunk + log_w[None, :], axis=1)
    return out - 2 * math.log(MOONS_SCALE)


TOYS: dict[str, Toy] = {
    t.name: t
    for t in (
        Toy("8gaussians", "equal mixture of 8 Gaussians on a circle", _eight_sample, _eight_logp),
        Toy("checkerboard", "uniform on 8 squares of a 4x4 board", _checker_sample, _checker_logp),
        Toy("rings", "4 concentric noisy rings", _rings_sample, _rings_logp),
        Toy("moons", "two interleaved noisy half circles", _moons_sample, _moons_logp),
    )
}
