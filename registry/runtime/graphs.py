"""How a stored model's ONNX graphs are called: their roles, inputs, outputs and noise.

This is the store's description of a model as much as the plugin contract's: families write
it at export, and the serving runtime reads it to feed each graph. Every random draw a graph
needs is an explicit input (a :class:`NoiseInput`), so whoever calls it controls the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

NoiseDist = Literal["normal", "uniform", "gumbel"]
# Gumbel draws come from uniforms kept off 0 and 1, so that every draw is finite (and a
# temperature of 0 gives exact zeros, not NaN).
_GUMBEL_EDGE = 1e-12


class NoiseInput(BaseModel):
    """A random draw fed to a graph as an explicit input, so the caller controls the seed.

    ``normal`` and ``gumbel`` draws are scaled by the sampling temperature: for a Gumbel-max
    choice argmax(logits + T g) that is a draw from softmax(logits / T), so T works alike
    for continuous noise and for discrete choices (T = 0: the most likely value).
    """

    name: str
    dist: NoiseDist
    dim: int


class StepLoop(BaseModel):
    """A sampler that is one step, applied ``steps`` times by the serving runtime.

    Each step feeds the graph the state (``state_input``, float32 rows of ``state_dim``, all
    ``init`` at the start), the step index (``step_input``, an int64 column, 0 to steps - 1)
    and that step's own draw of every noise input; the graph's output is the next state. The
    state after the last step is the sample, in data units.
    """

    steps: int = Field(ge=1)
    state_dim: int = Field(ge=1)
    state_input: str = "state"
    step_input: str = "step"
    init: float = 0.0


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
    loop: StepLoop | None = None  # a sampler applied step by step (autoregressive, diffusion)

    @model_validator(mode="after")
    def _loop_is_a_sampler(self) -> GraphSpec:
        if self.loop is None:
            return self
        if self.role != "sampler" or self.x_input is not None:
            raise ValueError("loop: only a sampler (role='sampler', x_input=None) can be a step loop")
        reserved = {self.loop.state_input, self.loop.step_input}
        clash = reserved & {n.name for n in self.noise}
        if len(reserved) < 2 or clash:
            raise ValueError(
                f"loop: the state, step and noise inputs need distinct names (clash: {sorted(clash)})"
            )
        return self


def draw_noise(
    specs: list[NoiseInput], n: int, rng: np.random.Generator, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """One array per noise input; ``temperature`` scales the normal and Gumbel draws (sampling only)."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.dist == "normal":
            out[spec.name] = (rng.standard_normal((n, spec.dim)) * temperature).astype(np.float32)
        elif spec.dist == "gumbel":
            u = np.clip(rng.random((n, spec.dim)), _GUMBEL_EDGE, 1.0 - _GUMBEL_EDGE)
            out[spec.name] = (-np.log(-np.log(u)) * temperature).astype(np.float32)
        else:
            out[spec.name] = rng.random((n, spec.dim), dtype=np.float32)
    return out


def loop_noise(
    spec: GraphSpec, n: int, rng: np.random.Generator, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """Every step's noise for a step-loop sampler: one (steps, n, dim) array per noise input.

    Step t's draws follow step t - 1's in one seeded stream, so a seed fixes the whole loop.
    """
    assert spec.loop is not None
    draws = [draw_noise(spec.noise, n, rng, temperature) for _ in range(spec.loop.steps)]
    return {d.name: np.stack([step[d.name] for step in draws]) for d in spec.noise}


def run_loop(
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    spec: GraphSpec,
    n: int,
    step_noise: Callable[[int], dict[str, np.ndarray]],
) -> np.ndarray:
    """Apply a step-loop sampler: ``run`` is one call of its graph, ``step_noise(t)`` step t's draws.

    Called for t = 0, 1, ... in order, so a generator drawing as it is asked gives the stream
    :func:`loop_noise` gives, without holding every step's noise at once.
    """
    loop = spec.loop
    assert loop is not None
    state = np.full((n, loop.state_dim), loop.init, dtype=np.float32)
    for t in range(loop.steps):
        feeds = dict(step_noise(t))
        feeds[loop.state_input] = state
        feeds[loop.step_input] = np.full((n, 1), t, dtype=np.int64)
        state = np.asarray(run(feeds), dtype=np.float32)
    return state


def sample_noise(
    spec: GraphSpec, n: int, rng: np.random.Generator, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """A sampler's noise: one draw per input, or (steps, n, dim) per input for a step loop."""
    if spec.loop is None:
        return draw_noise(spec.noise, n, rng, temperature)
    return loop_noise(spec, n, rng, temperature)


def run_sampler(
    run: Callable[[dict[str, np.ndarray]], np.ndarray], spec: GraphSpec, n: int, noise: dict[str, np.ndarray]
) -> np.ndarray:
    """Samples from a sampler graph given its noise (:func:`sample_noise`): one call, or the loop."""
    if spec.loop is None:
        return run(noise)
    return run_loop(run, spec, n, lambda t: {name: draws[t] for name, draws in noise.items()})
