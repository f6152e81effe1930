"""How a stored model's ONNX graphs are called: their roles, inputs, outputs and noise.

This is the store's description of a model as much as the plugin contract's: families write
it at export, and the serving runtime reads it to feed each graph. Every random draw a graph
needs is an explicit input (a :class:`NoiseInput`), so whoever calls it controls the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

NoiseDist = Literal["normal", "uniform", "gumbel"]
# What a bound scorer's k draws per row may be summarised as (registry.runtime.scoring).
Estimate = Literal["average", "importance_weighted"]
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

    A loop whose graph also takes the step count (``count_input``, an int64 column: a diffusion
    model's time grid follows it) samples with any count from 1 to ``max_steps``; ``steps`` is
    then its default. Without ``count_input`` the count is fixed (an autoregressive model fills
    one dimension per step).
    """

    steps: int = Field(ge=1)
    state_dim: int = Field(ge=1)
    state_input: str = "state"
    step_input: str = "step"
    init: float = 0.0
    count_input: str | None = None
    max_steps: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _counted(self) -> StepLoop:
        if (self.count_input is None) != (self.max_steps is None):
            raise ValueError("loop: count_input and max_steps go together (a loop with a chosen step count)")
        if self.max_steps is not None and self.steps > self.max_steps:
            raise ValueError(f"loop: default steps {self.steps} exceeds max_steps {self.max_steps}")
        return self

    def count(self, requested: int | None) -> int:
        """The number of steps to run for a request of ``requested`` (None: the default).

        ValueError, naming ``steps``, for a count this loop cannot run.
        """
        if requested is None or requested == self.steps:
            return self.steps
        if self.max_steps is None:
            raise ValueError(f"steps: this sampler runs exactly {self.steps} steps, not {requested}")
        if not 1 <= requested <= self.max_steps:
            raise ValueError(f"steps: {requested} is outside 1..{self.max_steps}, the sampler's range")
        return requested


class LatentPart(BaseModel):
    """A block of columns of an encoder's output: ``name`` over ``dim`` columns, in order."""

    name: Literal["z", "mean", "log_var", "dequantized"]
    dim: int = Field(ge=1)


class Condition(BaseModel):
    """A class label fed to a graph as one more explicit input (an int64 column, ``name``).

    Labels run over 0..classes-1. A graph trained with label dropout (classifier-free guidance)
    also takes ``classes`` itself, the null class: "no label". A sampler may take a guidance
    scale (``guidance``, a float32 column) w: its step mixes the unconditional and the
    conditional prediction as uncond + w (cond - uncond), so w = 0 is the unconditional model,
    1 the conditional one, and w > 1 guided.
    """

    name: str = "y"
    classes: int = Field(ge=2)
    null: bool = False
    guidance: str | None = None


class GraphCost(BaseModel):
    """What one call of a graph costs on the CPU, measured (registry.runtime.cost): its peak
    resident memory is about ``call_bytes`` + ``row_bytes`` x rows, its time ``call_seconds`` +
    ``row_seconds`` x rows. ``rows``: the largest batch the measurement ran."""

    row_bytes: int = Field(ge=0)
    call_bytes: int = Field(ge=0)
    row_seconds: float = Field(ge=0)
    call_seconds: float = Field(ge=0)
    rows: int = Field(ge=1)


class GraphSpec(BaseModel):
    """One exported ONNX graph and how to call it.

    ``role`` is ``sampler`` (noise -> x in data units), ``scorer`` (x, noise -> per-row
    log-likelihood or bound in nats), ``discriminator`` (x -> logit), or an auxiliary graph a
    family adds (``encoder``, ``decoder``). ``kind`` names the score a scorer returns
    (``log_prob`` or ``bound``), and what a latent-space graph computes:

    - an ``encoder`` of kind ``gaussian`` answers q(z|x)'s ``mean`` and ``log_var`` (its
      ``parts``), from which the runtime takes z (the mean, or a seeded draw); one of kind
      ``exact`` answers z = f(x) itself, and for discrete data also the ``dequantized`` row
      x + u that z is the image of, u drawn from its noise inputs;
    - a ``decoder`` (``x_input`` the latent, ``z``) of kind ``mean`` answers E[x|z] in data
      units, ``sample`` a draw of x|z from its noise, ``exact`` the inverse f^-1(z) (for
      discrete data the dequantized row, whose floor is x), ``params`` the family's own
      distribution parameters (its evaluations read them; never served).

    A ``bound`` scorer with noise returns one log importance weight log w per row, with
    E[w] <= P(x) over its noise: its mean over draws is a lower bound (an ELBO, or the uniform
    dequantisation bound), and so is log mean_k w_k over k draws (the importance-weighted
    bound), which tightens as k grows. ``estimates`` says which of the two its output
    supports: a scorer whose output is an unbiased estimate of a bound but not a log importance
    weight (a diffusion loss at random times) supports ``average`` only, and the runtime never
    serves log mean exp for it.
    """

    role: Literal["sampler", "scorer", "discriminator", "encoder", "decoder"]
    file: str
    kind: Literal["log_prob", "bound", "gaussian", "exact", "mean", "sample", "params"] | None = None
    x_input: str | None = "x"
    noise: list[NoiseInput] = []
    output: str
    loop: StepLoop | None = None  # a sampler applied step by step (autoregressive, diffusion)
    # A one-call draw whose drawn values feed its later ones (a VAE's local decoder, unrolled in
    # the graph): like a step loop's, a level flipped at a bin edge moves the draws after it.
    chained: bool = False
    estimates: list[Estimate] = ["average", "importance_weighted"]  # a bound scorer's k-draw summaries
    parts: list[LatentPart] = []  # an encoder's output columns, in order
    condition: Condition | None = None  # the class label input of a conditional model's graph
    # Measured when the model is stored (registry.pipeline.train), or when it is loaded for a
    # version stored without it: what the runtime sizes its chunks of rows by.
    cost: GraphCost | None = None

    @model_validator(mode="after")
    def _loop_is_a_sampler(self) -> GraphSpec:
        if self.loop is None:
            return self
        if self.role != "sampler" or self.x_input is not None:
            raise ValueError("loop: only a sampler (role='sampler', x_input=None) can be a step loop")
        names = [self.loop.state_input, self.loop.step_input]
        names += [self.loop.count_input] if self.loop.count_input else []
        reserved = set(names)
        clash = reserved & {n.name for n in self.noise}
        if len(reserved) < len(names) or clash:
            raise ValueError(
                f"loop: the state, step and noise inputs need distinct names (clash: {sorted(clash)})"
            )
        return self

    @model_validator(mode="after")
    def _latent(self) -> GraphSpec:
        names = [p.name for p in self.parts]
        if self.parts and self.role != "encoder":
            raise ValueError("parts: only an encoder's output is split into parts")
        if self.role == "encoder" and self.kind == "gaussian" and names != ["mean", "log_var"]:
            raise ValueError("parts: a gaussian encoder answers mean and log_var, in that order")
        if self.role == "encoder" and self.kind == "exact" and names[:1] != ["z"]:
            raise ValueError("parts: an exact encoder answers z first")
        return self

    @model_validator(mode="after")
    def _conditioned(self) -> GraphSpec:
        cond = self.condition
        if cond is None:
            return self
        names = [cond.name, *([cond.guidance] if cond.guidance else [])]
        taken = {n.name for n in self.noise} | {self.x_input}
        if self.loop is not None:
            taken |= {self.loop.state_input, self.loop.step_input, self.loop.count_input}
        clash = taken & set(names)
        if clash or len(set(names)) < len(names):
            raise ValueError(f"condition: its inputs need names of their own (clash: {sorted(clash)})")
        if cond.guidance and (self.role != "sampler" or not cond.null):
            raise ValueError("condition: guidance applies to a sampler trained with a null class")
        return self

    @model_validator(mode="after")
    def _estimates(self) -> GraphSpec:
        if "average" not in self.estimates:
            raise ValueError("estimates: every bound scorer supports the average over draws")
        return self


# The guidance scale the parity check runs a guided sampler at: both of its predictions count.
PARITY_GUIDANCE = 2.0


def condition_feeds(
    spec: GraphSpec, labels: np.ndarray | None, guidance: float | None = None
) -> dict[str, np.ndarray]:
    """The condition inputs of ``spec`` for rows labelled ``labels`` ({} for a graph without
    one): the labels as an int64 column, and a guided sampler's scale (default 1: conditional)."""
    cond = spec.condition
    if cond is None:
        return {}
    if labels is None:
        raise ValueError(f"{spec.file} is conditional: it needs a label per row")
    y = np.asarray(labels, dtype=np.int64).reshape(-1, 1)
    feeds = {cond.name: y}
    if cond.guidance:
        feeds[cond.guidance] = np.full((len(y), 1), 1.0 if guidance is None else guidance, dtype=np.float32)
    return feeds


def random_conditions(spec: GraphSpec, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Labels drawn uniformly (the null class too, where the graph takes it) for a parity check."""
    cond = spec.condition
    if cond is None:
        return {}
    labels = rng.integers(0, cond.classes + int(cond.null), n)
    return condition_feeds(spec, labels, PARITY_GUIDANCE)


def by_file(graphs: list[GraphSpec] | tuple[GraphSpec, ...]) -> dict[str, GraphSpec]:
    """Each graph file and the first spec that names it: two specs may call one file (a VAE's
    sampler is also its decoder's draw), which is opened, measured and timed once, under the
    first spec's role."""
    return {g.file: g for g in reversed(graphs)}


def _draw(spec: NoiseInput, n: int, rng: np.random.Generator, temperature: float) -> np.ndarray:
    if spec.dist == "normal":
        return (rng.standard_normal((n, spec.dim)) * temperature).astype(np.float32)
    if spec.dist == "gumbel":
        u = np.clip(rng.random((n, spec.dim)), _GUMBEL_EDGE, 1.0 - _GUMBEL_EDGE)
        return (-np.log(-np.log(u)) * temperature).astype(np.float32)
    return rng.random((n, spec.dim), dtype=np.float32)


def draw_noise(
    specs: list[NoiseInput], n: int, rng: np.random.Generator, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """One array per noise input; ``temperature`` scales the normal and Gumbel draws (sampling only)."""
    return {spec.name: _draw(spec, n, rng, temperature) for spec in specs}


def noise_chunks(
    specs: list[NoiseInput], n: int, rng: np.random.Generator, chunk: int, temperature: float = 1.0
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`draw_noise` of n rows, yielded ``chunk`` rows at a time: the same numbers, with
    one chunk of each input in memory.

    draw_noise draws each input's n rows in turn from one stream, and numpy fills an array row
    by row, so input j's rows a..b are what the stream gives from where input j began, after
    its first a rows. Where each input begins is found by drawing (and dropping) the inputs
    before it, chunk by chunk; then each input's chunks come from its own copy of the stream.
    ``rng`` ends where draw_noise would have left it.
    """
    if n <= chunk:
        yield draw_noise(specs, n, rng, temperature)
        return
    starts = []
    for j, spec in enumerate(specs):
        starts.append(rng.bit_generator.state)
        if j < len(specs) - 1:
            for a in range(0, n, chunk):
                _draw(spec, min(chunk, n - a), rng, temperature)
    streams = []
    for state in starts:
        bits = type(rng.bit_generator)()
        bits.state = state
        streams.append(np.random.Generator(bits))
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        yield {spec.name: _draw(spec, m, g, temperature) for spec, g in zip(specs, streams, strict=True)}
    if streams:
        rng.bit_generator.state = streams[-1].bit_generator.state


def loop_noise(
    spec: GraphSpec, n: int, rng: np.random.Generator, temperature: float = 1.0, steps: int | None = None
) -> dict[str, np.ndarray]:
    """Every step's noise for a step-loop sampler: one (steps, n, dim) array per noise input.

    Step t's draws follow step t - 1's in one seeded stream, so a seed fixes the whole loop.
    """
    assert spec.loop is not None
    draws = [draw_noise(spec.noise, n, rng, temperature) for _ in range(spec.loop.count(steps))]
    return {d.name: np.stack([step[d.name] for step in draws]) for d in spec.noise}


def run_loop(
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    spec: GraphSpec,
    n: int,
    step_noise: Callable[[int], dict[str, np.ndarray]],
    steps: int | None = None,
) -> np.ndarray:
    """Apply a step-loop sampler: ``run`` is one call of its graph, ``step_noise(t)`` step t's draws.

    Called for t = 0, 1, ... in order, so a generator drawing as it is asked gives the stream
    :func:`loop_noise` gives, without holding every step's noise at once. ``steps``: the count
    (None: the loop's default; ValueError for one it cannot run).
    """
    loop = spec.loop
    assert loop is not None
    count = loop.count(steps)
    state = np.full((n, loop.state_dim), loop.init, dtype=np.float32)
    for t in range(count):
        feeds = dict(step_noise(t))
        feeds[loop.state_input] = state
        feeds[loop.step_input] = np.full((n, 1), t, dtype=np.int64)
        if loop.count_input:
            feeds[loop.count_input] = np.full((n, 1), count, dtype=np.int64)
        state = np.asarray(run(feeds), dtype=np.float32)
    return state


def sample_noise(
    spec: GraphSpec, n: int, rng: np.random.Generator, temperature: float = 1.0, steps: int | None = None
) -> dict[str, np.ndarray]:
    """A sampler's noise: one draw per input, or (steps, n, dim) per input for a step loop."""
    if spec.loop is None:
        return draw_noise(spec.noise, n, rng, temperature)
    return loop_noise(spec, n, rng, temperature, steps)


def run_sampler(
    run: Callable[[dict[str, np.ndarray]], np.ndarray], spec: GraphSpec, n: int, noise: dict[str, np.ndarray]
) -> np.ndarray:
    """Samples from a sampler graph given its noise (:func:`sample_noise`): one call, or the loop
    (as many steps as the noise holds)."""
    if spec.loop is None:
        return run(noise)
    # Conditions (a label, a guidance scale) are fed whole to every step; noise is per step.
    drawn = {d.name for d in spec.noise}
    fixed = {name: value for name, value in noise.items() if name not in drawn}
    steps = len(noise[spec.noise[0].name]) if spec.noise else None
    return run_loop(run, spec, n, lambda t: {**fixed, **{name: noise[name][t] for name in drawn}}, steps)
