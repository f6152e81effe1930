"""A stored model opened for inference: one ONNX Runtime session per graph, and seeded sampling.

Scoring goes through :func:`registry.runtime.scoring.score`, the one path that the CLI, the
service and the training pipeline's evaluation share. Never imports torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from registry.runtime import cost as costs
from registry.runtime.budget import (
    HELD_VALUE_BYTES,
    REQUEST_MEMORY,
    RESERVE,
    SHRINK_BYTES,
    BudgetError,
    Plan,
    checkpoint,
    chunk_rows,
    fitting_rows,
    progressed,
)
from registry.runtime.graphs import (
    GraphCost,
    GraphSpec,
    by_file,
    condition_feeds,
    draw_noise,
    noise_chunks,
    run_loop,
)
from registry.runtime.rows import InputError, check_labels
from registry.runtime.sessions import open_session, shrink_options
from registry.runtime.store import StoredModel

# Calls of at least this many rows teach a graph's per-row time (smaller ones are mostly the
# fixed cost of a call).
BULK_ROWS = 256
# The largest classifier-free guidance scale served: beyond about 10 samples saturate (the
# papers use 1-8), and the step's arithmetic stays far from float32's range.
MAX_GUIDANCE = 20.0


class CapabilityError(ValueError):
    """The model cannot do what was asked; the message names what it can do.

    ``field`` is the request field at fault: the model itself, or the score ``kind`` asked for.
    """

    def __init__(self, message: str, field: str = "model") -> None:
        super().__init__(message)
        self.field = field


def model_kinds(capabilities: list[str], classes: int | None = None) -> list[str]:
    """The score kinds a model with these capabilities answers: a conditional likelihood model
    (``classes``) is also a classifier, by Bayes' rule."""
    kinds = [c for c in ("log_prob", "bound") if c in capabilities]
    if classes and kinds:
        kinds.append("classify")
    if "discriminate" in capabilities:
        kinds.append("discriminator")
    return kinds


def stored_classes(data: dict) -> int | None:
    """How many classes a stored model is conditioned on (None: an unconditional model)."""
    classes = data.get("classes")
    return int(classes) if classes else None


def feed_row_bytes(spec: GraphSpec, width: int) -> int:
    """A row's inputs as fed (float32), and its noise as drawn: numpy's float64 draws and their
    scaled copy before the cast (a Gumbel's logs, one after the other), 24 bytes a value."""
    noise = sum(n.dim for n in spec.noise)
    return 4 * width + 24 * noise + 16


def sample_held(stored: StoredModel, spec: GraphSpec, n: int) -> int:
    """What drawing ``n`` samples with the sampler ``spec`` holds for the whole request: the state
    and the next (float32), one step's noise (drawn float64, fed float32), and the answer
    (float32 rows, then JSON)."""
    width = spec.loop.state_dim if spec.loop is not None else 0
    noise = sum(d.dim for d in spec.noise)
    return n * (8 * width + 24 * noise + int(stored.data["dim"]) * HELD_VALUE_BYTES)


def score_held(rows: int, draws: int, width: int, passes: int = 1) -> int:
    """What scoring ``rows`` rows (``draws`` = rows x k draws in all) holds for the whole request:
    the parsed rows, and each draw's answer with the summaries made of it (float64), for every
    pass (a classification's (rows, classes) posterior among them)."""
    return rows * width * HELD_VALUE_BYTES + draws * 8 * 4 * passes


def most_rows(
    spec: GraphSpec,
    cost: GraphCost | None,
    width: int,
    held_row: int,
    budget: int = REQUEST_MEMORY,
    fixed: int = 0,
) -> int:
    """The most rows a request holding ``held_row`` bytes a row (besides ``fixed``) may bring and
    still be admitted by :meth:`LoadedModel.plan` over ``spec`` fed rows ``width`` wide: what the
    service publishes as a limit (a graph stored without its cost is judged by its held bytes)."""
    call_bytes = cost.call_bytes if cost is not None else 0
    row_bytes = (cost.row_bytes if cost is not None else 0) + feed_row_bytes(spec, width)
    return fitting_rows(budget, held_row, call_bytes, row_bytes, fixed)


def admits(
    spec: GraphSpec, cost: GraphCost | None, width: int, held: int, budget: int = REQUEST_MEMORY
) -> bool:
    """Whether :meth:`LoadedModel.plan` over ``spec`` takes a request holding ``held`` bytes."""
    return most_rows(spec, cost, width, max(1, held), budget) >= 1


class LoadedModel:
    """A stored model with one ONNX Runtime session per graph, opened once."""

    def __init__(
        self,
        stored: StoredModel,
        providers: list[str] | None = None,
        threads: int = 0,
        budget: int = REQUEST_MEMORY,
    ) -> None:
        self.stored = stored
        self.budget = budget
        # Each graph's measured cost (stored with it, or measured on first need).
        self.costs: dict[str, GraphCost | None] = {spec.file: spec.cost for spec in stored.graphs}
        # Per-row seconds of this process's large calls of each graph (BULK_ROWS and up).
        self.bulk_row_seconds: dict[str, float] = {}
        files = by_file(stored.graphs)
        self.sessions = {file: open_session(stored.read_verified(file), providers, threads) for file in files}
        # Called with (graph role, seconds) after each run: the service's latency metric.
        self.on_run: Callable[[str, float], None] | None = None
        # Each graph role's time, from this model's own calls: seconds per row (a moving
        # average) and the fastest call seen (the fixed cost of a call, whatever its rows).
        self.row_seconds: dict[str, float] = {}
        self.call_seconds: dict[str, float] = {}
        # How each graph is run; the service may wrap these (e.g. to batch concurrent calls).
        self.runners: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
            file: self._direct(spec) for file, spec in files.items()
        }
        # Large calls bypass the runners (batching them gains nothing) and give their arena back.
        self._shrinking = {file: self._direct(spec, shrink_options()) for file, spec in files.items()}

    def _direct(
        self, spec: GraphSpec, options: object = None
    ) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        session, output = self.sessions[spec.file], [spec.output]

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            start = time.perf_counter()
            out = session.run(output, feeds, options)[0]
            seconds = time.perf_counter() - start
            rows = max(1, out.shape[0] if out.ndim else 1)
            per_row = seconds / rows
            if rows >= BULK_ROWS:
                bulk = max(0.0, seconds - self.call_seconds.get(spec.role, 0.0)) / rows
                last_bulk = self.bulk_row_seconds.get(spec.file)
                self.bulk_row_seconds[spec.file] = bulk if last_bulk is None else 0.8 * last_bulk + 0.2 * bulk
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
        return model_kinds(self.stored.capabilities, self.classes)

    @property
    def classes(self) -> int | None:
        """The number of classes a conditional model takes (None: unconditional)."""
        return stored_classes(self.stored.data)

    def class_log_prior(self) -> np.ndarray:
        """log p(y): the training split's class frequencies, as stored."""
        return np.log(np.asarray(self.stored.data["class_prior"], dtype=np.float64))

    def labels_for(self, n: int, labels: np.ndarray | None, seed: int | None) -> np.ndarray | None:
        """The labels a conditional sampler draws ``n`` rows with: those given, else a seeded draw
        from p(y) (a sample of the marginal); None for an unconditional model. The draw comes
        from its own stream (a child of the seed's), so the noise is the same either way."""
        if self.classes is None:
            return None
        if labels is not None:
            return labels
        rng = np.random.default_rng(seed).spawn(1)[0]
        return rng.choice(self.classes, size=n, p=np.exp(self.class_log_prior()))

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

    # --- cost: what a call takes, and how a request's calls are cut --------------------------
    def cost(self, spec: GraphSpec) -> GraphCost:
        """``spec``'s measured cost: stored with the model, or measured now (in a child process)."""
        found = self.costs.get(spec.file)
        if found is None:
            found = self.costs[spec.file] = costs.measure(self.stored.file(spec.file), spec)
        return found

    def measure_costs(self) -> None:
        """Measure every graph stored without its cost (the service does it when it loads)."""
        todo = [spec for file, spec in by_file(self.stored.graphs).items() if self.costs.get(file) is None]
        found = costs.measure_all([(self.stored.file(spec.file), spec) for spec in todo])
        self.costs.update({spec.file: cost for spec, cost in zip(todo, found, strict=True)})

    def row_seconds_of(self, spec: GraphSpec) -> float:
        """Seconds per row of ``spec``'s calls: this process's large calls, else the measurement."""
        return self.bulk_row_seconds.get(spec.file, self.cost(spec).row_seconds)

    def plan(
        self,
        spec: GraphSpec,
        rows: int,
        *,
        calls: int = 1,
        held: int = 0,
        width: int | None = None,
        field: str = "x",
    ) -> Plan:
        """How ``calls`` calls of ``spec`` over ``rows`` rows in all (``rows // calls`` each) run
        within the memory budget, ``held`` bytes being held by the request besides; BudgetError
        naming ``field`` when even one row would not fit."""
        cost = self.cost(spec)
        per_call = max(1, rows // calls)
        call_bytes = cost.call_bytes
        row_bytes = cost.row_bytes + feed_row_bytes(spec, self.dim if width is None else width)
        if held + call_bytes + row_bytes + RESERVE > self.budget:
            raise BudgetError(
                field,
                f"{field}: this request holds about {_mib(held)} before its first graph call, over the "
                f"{_mib(self.budget)} a request may use (GENREG_REQUEST_MEMORY); make it smaller",
            )
        chunk = min(per_call, chunk_rows(self.budget, held, call_bytes, row_bytes))
        chunks = calls * math.ceil(per_call / chunk)
        seconds = chunks * cost.call_seconds + rows * self.row_seconds_of(spec)
        return Plan(rows, chunks, chunk, held, call_bytes + chunk * row_bytes, seconds)

    def plan_score(self, rows: int, kind: str, k: int = 1, width: int | None = None, passes: int = 1) -> Plan:
        """The plan of scoring ``rows`` rows (``k`` draws each for a bound) as ``kind``, each
        row run ``passes`` times (a conditional model's classes: registry.runtime.scoring.passes)."""
        role = "discriminator" if kind == "discriminator" else "scorer"
        if kind == "classify":  # computed from the exact likelihood where there is one
            kind = "log_prob" if "log_prob" in self.stored.capabilities else "bound"
        spec = self.stored.graph(role, None if role == "discriminator" else kind)
        if spec is None:
            raise CapabilityError(
                f"{self.stored.tag} cannot score kind {kind!r}; it has: {', '.join(self.kinds)}"
            )
        held = score_held(rows, rows * k, self.dim if width is None else width, passes)
        return self.plan(spec, rows * k * passes, calls=passes, held=held, field="k" if k > 1 else "x")

    def plan_sample(self, n: int, steps: int | None = None, held: int = 0, field: str = "n") -> Plan:
        """The plan of drawing ``n`` samples with ``steps`` steps (None: the sampler's own),
        ``held`` bytes being held by the request besides (BudgetError naming ``field``)."""
        spec = self.stored.graph("sampler")
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} cannot sample; it can score: {', '.join(self.kinds)}")
        count = self.steps(steps)
        width = spec.loop.state_dim if spec.loop is not None else 0
        held += sample_held(self.stored, spec, n)
        return self.plan(spec, n * count, calls=count, held=held, width=width, field=field)

    def _runner(self, spec: GraphSpec, plan: Plan) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        """How ``plan``'s calls of ``spec`` run: large ones give their arena back when they end."""
        return self._shrinking[spec.file] if plan.chunk_bytes > SHRINK_BYTES else self.runners[spec.file]

    def run(self, spec: GraphSpec, feeds: dict[str, np.ndarray], plan: Plan | None = None) -> np.ndarray:
        """One graph call of any rows, run over chunks of ``plan.chunk`` rows (default: the
        budget's plan for these rows), checking between chunks that the answer is still wanted."""
        rows = len(next(iter(feeds.values())))
        plan = plan or self.plan(spec, rows)
        checkpoint()
        run = self._runner(spec, plan)
        if rows <= plan.chunk:
            out = run(feeds)
            progressed(rows)
            return out
        pieces = []
        for a in range(0, rows, plan.chunk):
            if a:
                checkpoint()
            pieces.append(run({name: value[a : a + plan.chunk] for name, value in feeds.items()}))
            progressed(len(pieces[-1]))
        return np.concatenate(pieces)

    def noisy(
        self,
        spec: GraphSpec,
        x: np.ndarray,
        k: int,
        seed: int | None,
        plan: Plan,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """The scorer ``spec`` over ``k`` draws of each row of ``x`` (row i's draw j: noise row
        i * k + j of one seeded stream), drawn and run a chunk at a time; ``labels``: a
        conditional graph's label per row of ``x``."""
        total = len(x) * k
        rng = np.random.default_rng(seed)
        run = self._runner(spec, plan)
        pieces = []
        for a, feeds in zip(
            range(0, total, plan.chunk), noise_chunks(spec.noise, total, rng, plan.chunk), strict=True
        ):
            checkpoint()
            b = min(a + plan.chunk, total)
            rows = slice(a, b) if k == 1 else np.arange(a, b) // k
            feeds[spec.x_input or "x"] = x[rows]
            if spec.condition is not None:
                feeds.update(condition_feeds(spec, None if labels is None else labels[rows]))
            pieces.append(run(feeds))
            progressed(b - a)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def sample(
        self,
        n: int,
        seed: int | None = None,
        temperature: float = 1.0,
        steps: int | None = None,
        labels: np.ndarray | None = None,
        guidance: float | None = None,
    ) -> np.ndarray:
        """n samples in data units; ``steps`` picks a step sampler's count (None: its default).

        A conditional model samples class ``labels[i]`` in row i (InputError naming labels for
        labels it cannot take; None: labels drawn from p(y)); ``guidance`` is a guided sampler's
        scale (None: 1).
        """
        spec = self.stored.graph("sampler")
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} cannot sample; it can score: {', '.join(self.kinds)}")
        count = self.steps(steps)
        self.check_guidance(guidance)
        if labels is not None:
            labels = self.check_labels(labels, n)
        plan = self.plan_sample(n, count)
        rng = np.random.default_rng(seed)
        given = condition_feeds(spec, self.labels_for(n, labels, seed), guidance)
        run = lambda feeds: self.run(spec, feeds, plan)  # noqa: E731
        if spec.loop is None:
            return run({**draw_noise(spec.noise, n, rng, temperature), **given})
        # Each step's noise is drawn as the loop reaches it: the same stream, a step's memory.
        return run_loop(
            run, spec, n, lambda t: {**draw_noise(spec.noise, n, rng, temperature), **given}, count
        )

    def check_labels(self, labels: object, rows: int | None = None, what: str = "labels") -> np.ndarray:
        """Labels this model can take (InputError naming ``what`` otherwise): see rows.check_labels."""
        return check_labels(labels, self.classes, rows, what)

    def sample_labels(
        self, n: int, label: int | None, labels: object, labels_field: str = "labels"
    ) -> np.ndarray | None:
        """The class of each of n samples from a request's ``label`` (one for all) or ``labels``
        (one per sample; ``labels_field``: what the request calls them, V2's y), checked
        (InputError naming the field; both at once naming the labels); None: neither, so a
        conditional model draws them from p(y)."""
        if label is not None and labels is not None:
            raise InputError(
                labels_field,
                f"{labels_field}: send label (one class for every sample) or {labels_field} (one per "
                "sample), not both",
            )
        if label is not None:
            return np.full(n, self.check_labels([label], what="label")[0], dtype=np.int64)
        if labels is not None:
            return self.check_labels(labels, n, what=labels_field)
        return None

    def check_guidance(self, guidance: float | None) -> None:
        """InputError naming ``guidance`` unless the sampler is guided (or none is asked for)."""
        if guidance is None:
            return
        spec = self.stored.graph("sampler")
        cond = spec.condition if spec is not None else None
        if cond is None or cond.guidance is None:
            raise InputError(
                "guidance",
                f"guidance: {self.stored.tag} has no guided sampler (classifier-free guidance needs a "
                "conditional model trained with a null class)",
            )
        if not np.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
            raise InputError("guidance", f"guidance: {guidance!r} is outside 0..{MAX_GUIDANCE:g}")

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

    def log_weights(
        self,
        x: np.ndarray,
        seed: int | None = None,
        k: int = 1,
        plan: Plan | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n, k) draws of the bound scorer per row: log importance weights, or (where its
        ``estimates`` lack importance_weighted) unbiased estimates of a bound.

        Row i's draw j uses noise row i * k + j of one seeded stream, so k = 1 gives the same
        numbers as a plain score with that seed.
        """
        spec = self.stored.graph("scorer", "bound")
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} has no bound scorer; it has: {', '.join(self.kinds)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        plan = plan or self.plan_score(len(x), "bound", k, width=x.shape[1] if x.ndim == 2 else None)
        return self.noisy(spec, x, k, seed, plan, labels).reshape(len(x), k).astype(np.float64)

    def logits(self, x: np.ndarray, plan: Plan | None = None, labels: np.ndarray | None = None) -> np.ndarray:
        """The discriminator's logit that each row is real."""
        spec = self.stored.graph("discriminator")
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} has no discriminator; it has: {', '.join(self.kinds)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        plan = plan or self.plan_score(len(x), "discriminator", width=x.shape[1] if x.ndim == 2 else None)
        return self.run(spec, {spec.x_input or "x": x, **condition_feeds(spec, labels)}, plan).reshape(-1)

    def point_scores(
        self,
        x: np.ndarray,
        kind: str,
        seed: int | None = None,
        plan: Plan | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """One scorer call per row for ``kind`` (log_prob, or a single bound draw), in nats."""
        spec = self.stored.graph("scorer", kind)
        if spec is None:
            raise CapabilityError(f"{self.stored.tag} has no {kind} scorer; it has: {', '.join(self.kinds)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        plan = plan or self.plan_score(len(x), kind, width=x.shape[1] if x.ndim == 2 else None)
        return self.noisy(spec, x, 1, seed, plan, labels).reshape(-1).astype(np.float64)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"
