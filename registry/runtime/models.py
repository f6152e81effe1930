"""A stored model opened for inference: one ONNX Runtime session per graph, and seeded sampling.

Scoring goes through :func:`registry.runtime.scoring.score`, the one path that the CLI, the
service and the training pipeline's evaluation share. Never imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from registry.runtime.graphs import GraphSpec, draw_noise, run_loop
from registry.runtime.rows import InputError
from registry.runtime.sessions import open_session
from registry.runtime.store import StoredModel


class CapabilityError(ValueError):
    """The model cannot do what was asked; the message names what it can do.

    ``field`` is the request field at fault: the model itself, or the score ``kind`` asked for.
    """

    def __init__(self, message: str, field: str = "model") -> None:
        super().__init__(message)
        self.field = field


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
            spec.file: open_session(stored.read_verified(spec.file), providers, threads)
            for spec in stored.graphs
        }
        # Called with (graph role, seconds) after each run: the service's latency metric.
        self.on_run: Callable[[str, float], None] | None = None
        # Each graph role's time, from this model's own calls: seconds per row (a moving
        # average) and the fastest call seen (the fixed cost of a call, whatever its rows).
        self.row_seconds: dict[str, float] = {}
        self.call_seconds: dict[str, float] = {}
        # How each graph is run; the service may wrap these (e.g. to batch concurrent calls).
        self.runners: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
            spec.file: self._direct(spec) for spec in stored.graphs
        }

    def _direct(self, spec: GraphSpec) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        session, output = self.sessions[spec.file], [spec.output]

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            start = time.perf_counter()
            out = session.run(output, feeds)[0]
            seconds = time.perf_counter() - start
            per_row = seconds / max(1, out.shape[0] if out.ndim else 1)
            last = self.row_seconds.get(spec.role)
            self.row_seconds[spec.role] = per_row if last is None else 0.8 * last + 0.2 * per_row
            self.call_seconds[spec.role] = min(seconds, self.call_seconds.get(spec.role, seconds))
            if self.on_run is not None:
                self.on_run(spec.role, seconds)
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

    def expected_seconds(self, role: str, rows: int, calls: int = 1) -> float | None:
        """How long ``calls`` calls of the ``role`` graph(s) with ``rows`` rows in all should
        take, judged by this model's calls so far (None before the first): each call's fixed
        cost (the fastest call seen) plus the rows at the average time per row. Per-row time
        falls with the batch size, so after small calls a large one is overestimated: the safe
        side for the service, which runs on its event loop only what is expected to be short.
        A step loop's n rows x S steps are S calls: without the fixed cost, one row for 1,000
        steps looked as short as one call."""
        per_row = self.row_seconds.get(role)
        if per_row is None:
            return None
        return calls * self.call_seconds[role] + rows * per_row

    def run(self, spec: GraphSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.runners[spec.file](feeds)

    def sample(
        self, n: int, seed: int | None = None, temperature: float = 1.0, steps: int | None = None
    ) -> np.ndarray:
        """n samples in data units; ``steps`` picks a step sampler's count (None: its default)."""
        spec = self.stored.graph("sampler")
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} cannot sample; it can score: {', '.join(self.kinds)}")
        count = self.steps(steps)
        rng = np.random.default_rng(seed)
        run = lambda feeds: self.run(spec, feeds)  # noqa: E731
        if spec.loop is None:
            return run(draw_noise(spec.noise, n, rng, temperature))
        # Each step's noise is drawn as the loop reaches it: the same stream, a step's memory.
        return run_loop(run, spec, n, lambda t: draw_noise(spec.noise, n, rng, temperature), count)

    def steps(self, requested: int | None = None) -> int:
        """The sampler's step count for a request (1 for a one-call sampler); InputError
        naming ``steps`` for a count the sampler cannot run."""
        spec = self.stored.graph("sampler")
        loop = spec.loop if spec is not None else None
        if loop is None:
            if requested not in (None, 1):
                raise InputError(
                    "steps", f"steps: {self.stored.tag} samples in one graph call, without steps"
                )
            return 1
        try:
            return loop.count(requested)
        except ValueError as exc:
            raise InputError("steps", f"{exc} ({self.stored.tag})") from None

    def estimates(self) -> list[str]:
        """How the bound scorer's draws may be summarised (GraphSpec.estimates); [] without one."""
        spec = self.stored.graph("scorer", "bound")
        return list(spec.estimates) if spec is not None else []

    def log_weights(self, x: np.ndarray, seed: int | None = None, k: int = 1) -> np.ndarray:
        """(n, k) draws of the bound scorer per row: log importance weights, or (where its
        ``estimates`` lack importance_weighted) unbiased estimates of a bound.

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

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The discriminator's logit that each row is real."""
        spec = self.stored.graph("discriminator")
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} has no discriminator; it has: {', '.join(self.kinds)}")
        return self.run(spec, {spec.x_input or "x": np.ascontiguousarray(x, dtype=np.float32)}).reshape(-1)

    def point_scores(self, x: np.ndarray, kind: str, seed: int | None = None) -> np.ndarray:
        """One scorer call per row for ``kind`` (log_prob, or a single bound draw), in nats."""
        spec = self.stored.graph("scorer", kind)
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} has no {kind} scorer; it has: {', '.join(self.kinds)}")
        feeds = draw_noise(spec.noise, len(x), np.random.default_rng(seed))
        feeds[spec.x_input or "x"] = np.ascontiguousarray(x, dtype=np.float32)
        return self.run(spec, feeds).reshape(-1).astype(np.float64)
