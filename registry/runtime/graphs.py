"""How a stored model's ONNX graphs are called: their roles, inputs, outputs and noise.

This is the store's description of a model as much as the plugin contract's: families write
it at export, and the serving runtime reads it to feed each graph. Every random draw a graph
needs is an explicit input (a :class:`NoiseInput`), so whoever calls it controls the seed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel

NoiseDist = Literal["normal", "uniform"]


class NoiseInput(BaseModel):
    """A random draw fed to a graph as an explicit input, so the caller controls the seed."""

    name: str
    dist: NoiseDist
    dim: int


class GraphSpec(BaseModel):
    """One exported ONNX graph and how to call it.

    ``role`` is ``sampler`` (noise -> x in data units), ``scorer`` (x, noise -> per-row
    log-likelihood or bound in nats), ``discriminator`` (x -> logit), or an auxiliary graph a
    family adds (``encoder``, ``decoder``). ``kind`` names the score a scorer returns
    (``log_prob`` or ``bound``).

    A ``bound`` scorer with noise returns one log importance weight log w per row, with
    E[w] <= P(x) over its noise: its mean over draws is a lower bound (an ELBO, or the uniform
    dequantisation bound), and so is log mean_k w_k over k draws (the importance-weighted
    bound), which tightens as k grows.
    """

    role: Literal["sampler", "scorer", "discriminator", "encoder", "decoder"]
    file: str
    kind: Literal["log_prob", "bound"] | None = None
    x_input: str | None = "x"
    noise: list[NoiseInput] = []
    output: str


def draw_noise(
    specs: list[NoiseInput], n: int, rng: np.random.Generator, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """One array per noise input; ``temperature`` scales the normal draws (sampling only)."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.dist == "normal":
            out[spec.name] = (rng.standard_normal((n, spec.dim)) * temperature).astype(np.float32)
        else:
            out[spec.name] = rng.random((n, spec.dim), dtype=np.float32)
    return out
