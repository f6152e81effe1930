"""Running stored models with ONNX Runtime: sampling and scoring with explicit, seeded noise.

This is the only inference path for stored models (CLI and service alike); it never
imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from registry.family import GraphSpec, NoiseInput
from registry.store import StoredModel
from registry.units import bits_per_dim

SCORE_KINDS = ("log_prob", "bound", "discriminator")


class CapabilityError(ValueError):
    """The model cannot do what was asked; the message names what it can do."""


def available_providers() -> list[str]:
    """CUDA first when ONNX Runtime has it and a GPU answers, then CPU."""
    import onnxruntime as ort

    found = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in found]


def open_session(path: Path, providers: list[str] | None = None, threads: int = 0):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    chosen = providers or available_providers()
    return ort.InferenceSession(str(path), options, providers=[_with_options(p) for p in chosen])


# TF32 matmuls on the GPU moved a flow's scores by 0.04-0.08 nats from PyTorch's (measured on
# an H200, benchmarks/RESULTS.md), 400x the export parity allowance, for about 10% more
# throughput at batch 4096: CUDA sessions keep full float32.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def _with_options(provider: str) -> str | tuple[str, dict[str, str]]:
    options = PROVIDER_OPTIONS.get(provider)
    return (provider, options) if options else provider


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


def model_kinds(capabilities: list[str]) -> list[str]:
    """The score kinds a model with these capabilities answers."""
    kinds = [c for c in ("log_prob", "bound") if c in capabilities]
    if "discriminate" in capabilities:
        kinds.append("discriminator")
    return kinds


class LoadedModel:
    """A stored model with one ONNX Runtime session per graph, opened once."""

    def __init__(self, stored: StoredModel, providers: list[str] | None = None, threads: int = 0) -> None:
        self.stored = stored
        self.sessions = {
            spec.file: open_session(stored.file(spec.file), providers, threads) for spec in stored.graphs
        }
        # Called with (graph role, seconds) after each run: the service's latency metric.
        self.on_run: Callable[[str, float], None] | None = None
        # How each graph is run; the service may wrap these (e.g. to batch concurrent calls).
        self.runners: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
            spec.file: self._direct(spec) for spec in stored.graphs
        }

    def _direct(self, spec: GraphSpec) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        session, output = self.sessions[spec.file], [spec.output]

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            start = time.perf_counter()
            out = session.run(output, feeds)[0]
            if self.on_run is not None:
                self.on_run(spec.role, time.perf_counter() - start)
            return out

        return run

    @property
    def dim(self) -> int:
        return int(self.stored.data["dim"])

    @property
    def kinds(self) -> list[str]:
        return model_kinds(self.stored.capabilities)

    def providers(self) -> list[str]:
        return sorted({p for s in self.sessions.values() for p in s.get_providers()})

    @property
    def provider(self) -> str:
        """The execution provider that runs this model's graphs, as ONNX Runtime reports it.

        Asked of the sessions, not of the request: onnxruntime-gpu offers CUDA even where no GPU
        answers, and then quietly runs on the CPU. Where graphs differ, the slowest one (CPU)
        is named.
        """
        first = sorted({s.get_providers()[0] for s in self.sessions.values()})
        return "CPUExecutionProvider" if "CPUExecutionProvider" in first else first[0]

    def run(self, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.runners[spec.file](feeds)

    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0) -> np.ndarray:
        spec = self.stored.graph("sampler")
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} cannot sample; it can score: {', '.join(self.kinds)}")
        noise = draw_noise(spec.noise, n, np.random.default_rng(seed), temperature)
        return self.run(spec, noise)

    def default_kind(self) -> str:
        if not self.kinds:
            raise CapabilityError(f"{self.stored.tag} has no scorer")
        return self.kinds[0]

    def log_weights(self, x: np.ndarray, seed: int | None = None, k: int = 1) -> np.ndarray:
        """(n, k) log importance weights from the bound scorer: k noise draws per row.

        Row i's draw j uses noise row i * k + j of one seeded stream, so k = 1 gives the same
        numbers as a plain score with that seed.
        """
        spec = self.stored.graph("scorer", "bound")
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} has no bound scorer; it has: {', '.join(self.kinds)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows = np.repeat(x, k, axis=0) if k > 1 else x
        feeds = draw_noise(spec.noise, len(rows), np.random.default_rng(seed))
        feeds[spec.x_input or "x"] = rows
        return self.run(spec, feeds).reshape(len(x), k).astype(np.float64)

    def score(
        self, x: np.ndarray, kind: str | None = None, seed: int | None = None, k: int = 1
    ) -> tuple[str, np.ndarray, np.ndarray | None]:
        """(kind, per-row scores, bits/dim or None). Nats for likelihoods; P(real) for discriminator.

        For a bound with k > 1 draws the score is the importance-weighted bound
        log mean_k w_k (see :func:`bound_estimates`).
        """
        kind = kind or self.default_kind()
        if kind not in self.kinds:
            raise CapabilityError(
                f"{self.stored.tag} cannot score kind {kind!r}; it has: {', '.join(self.kinds) or 'none'}"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if kind == "discriminator":
            spec = self.stored.graph("discriminator")
            logits = self.run(spec, {spec.x_input or "x": x}).reshape(-1)
            return kind, 1.0 / (1.0 + np.exp(-logits.astype(np.float64))), None
        if kind == "bound":
            scores = bound_estimates(self.log_weights(x, seed, k))[1]
            return kind, scores, bits_per_dim(scores, self.dim)
        spec = self.stored.graph("scorer", kind)
        feeds = draw_noise(spec.noise, len(x), np.random.default_rng(seed))
        feeds[spec.x_input or "x"] = x
        scores = self.run(spec, feeds).reshape(-1).astype(np.float64)
        return kind, scores, bits_per_dim(scores, self.dim)


def bound_estimates(log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(average bound, importance-weighted bound) per row from (n, k) log weights.

    mean_k log w_k is the ELBO-style bound; log mean_k w_k (computed with log-sum-exp) is the
    importance-weighted bound, at least as large and still a lower bound in expectation.
    """
    top = log_w.max(1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    iw = (top + np.log(np.mean(np.exp(log_w - top), axis=1, keepdims=True)))[:, 0]
    return log_w.mean(1), iw
