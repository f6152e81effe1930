"""The BentoML service: /sample, /score, /models over the model store, ONNX Runtime only.

Requests are validated by :mod:`services.schemas`; every problem is answered with a 4xx
JSON body ``{"error", "field"}`` (404 for an unknown model, 422 for a kind the model lacks,
400 for anything else wrong in the body), counted in ``genreg_errors_total``, and logged
as one line, never as a traceback. HTTP requests reach :meth:`Genreg.handle` through the
routes that services.routes mounts on the service (BentoML's documented way to add routes),
which read and parse each body once; bearer auth (services.auth) guards every route. The
Open Inference Protocol's routes (services.v2) call the same :meth:`Genreg.score` and
:meth:`Genreg.sample`: one path per operation, whichever protocol asked.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import bentoml
import numpy as np
from bentoml._internal.configuration.containers import BentoMLContainer
from starlette.responses import Response

from registry.runtime import latent, scoring
from registry.runtime.budget import (
    BudgetError,
    Cancelled,
    Plan,
    release_memory,
    return_large_frees,
)
from registry.runtime.graphs import GraphSpec
from registry.runtime.images import image_shape
from registry.runtime.models import CapabilityError, LoadedModel, model_kinds, stored_classes
from registry.runtime.png import png_grid
from registry.runtime.remote import pull_new
from registry.runtime.rows import InputError, check_rows
from registry.runtime.scoring import Scores, draw_weight
from registry.runtime.store import ModelNotFound, StoreError, list_models
from registry.runtime.two_sample import c2st, mmd_test
from services.admission import HEAVY_BYTES, MAX_HEAVY, HeavyGate
from services.auth import BearerAuth
from services.batching import Batcher
from services.cache import MODEL_CONTROL, ModelCache, Watcher, allow_list
from services.errors import ApiError, error_response, json_response
from services.limits import (
    TRAFFIC,
    latent_limits,
    limit_source,
    row_cap,
    sample_limit,
    sample_n,
    score_limit,
    two_sample_fits,
    two_sample_held,
    two_sample_rows,
    work_seconds,
)
from services.metrics import INFERENCE_SECONDS, MODEL_INFO, ROWS
from services.routes import API_PATHS, ApiRoutes
from services.schemas import (
    MAX_BODY_BYTES,
    MAX_JSON_BYTES,
    MODEL_NAME,
    MODEL_REF,
    DecodeRequest,
    EncodeRequest,
    ModelInfo,
    RepositoryAnswer,
    RepositoryEntry,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    SampleRequest,
    ScoreRequest,
    TwoSampleRequest,
    conditioning,
    sampling,
    validate,
)
from services.tasks import Tasks, Work
from services.traffic import IN_TASK, MAX_CONCURRENCY, TIMEOUT_SECONDS, watching
from services.v2 import endpoint_of

log = logging.getLogger("genreg.service")
# BentoML's server logging passes its own loggers' INFO lines and only warnings from the rest:
# genreg's one-line refusals and access log (services.traffic) are INFO, as BentoML's access
# log is, and are meant to be read.
logging.getLogger("genreg").setLevel(logging.INFO)
MODEL_PATTERN = re.compile(MODEL_REF)
WORKERS = int(os.environ.get("GENREG_WORKERS", "1"))
# One intra-op thread per session by default: ONNX Runtime's own pool spins against the HTTP
# workers for the cores, and lost at batch 1 and 1024 alike (benchmarks/RESULTS.md, Serving).
ORT_THREADS = int(os.environ.get("GENREG_ORT_THREADS", "1"))
# Adaptive batching of concurrent ONNX Runtime calls per graph (see services.batching and
# benchmarks/RESULTS.md for when it pays off); 0 turns it off.
BATCH_MAX_ROWS = int(os.environ.get("GENREG_BATCH_MAX_ROWS", "0"))
# Which model calls run on the event loop rather than a worker thread, by the time the model's
# own calls say they take (LoadedModel.expected_seconds): always below INLINE_MS, where the
# thread hop (0.1-0.25 ms) costs as much as the call; up to ALONE_MS when no other request is
# in flight in this worker, nor was 0.1 s ago (Traffic.alone), where the hop is all a thread
# would add (0.2 ms of a 1,024-row request's 8.5 ms) and nothing waits but requests that
# arrive meanwhile, health probes included, which wait at most ALONE_MS (benchmarks/RESULTS.md,
# "The load generator, and genreg's routes in front of BentoML's middlewares").
INLINE_MS = float(os.environ.get("GENREG_INLINE_MS", "0.5"))
ALONE_MS = float(os.environ.get("GENREG_ALONE_MS", "25"))
# Rows of a /score body up to this many values are checked on the event loop (a 1,024-row digits
# batch in well under a millisecond); larger ones in a worker thread, which a 4,096 x 3,072 body
# kept busy for 0.26 s, holding every other request of the worker, health probes included.
CHECK_INLINE_VALUES = 1 << 16
# How often the live registry looks for new versions in the store (a directory scan: cheap).
POLL_SECONDS = float(os.environ.get("GENREG_POLL_SECONDS", "2"))
# With GENREG_MODELS_FROM (genreg serve --models-from), how often to look for pushed versions.
REMOTE_POLL_SECONDS = float(os.environ.get("GENREG_REMOTE_POLL_SECONDS", "10"))


def _can_sample(loaded: LoadedModel) -> None:
    """ApiError 422 for a model without a sampler (whatever else the request asks)."""
    if loaded.stored.graph("sampler") is None:
        raise ApiError(
            422,
            "model",
            f"{loaded.stored.tag} cannot sample; it can score: {', '.join(loaded.kinds) or 'nothing'}",
            "missing_capability",
        )


def _conditional(spec: GraphSpec | None) -> bool:
    return spec is not None and spec.condition is not None


def _sample_labels(
    loaded: LoadedModel,
    n: int,
    label: int | None,
    labels: Any,
    guidance: float | None,
    labels_field: str = "labels",
) -> np.ndarray | None:
    """The class of each of n samples (None: a conditional model draws them from p(y)); 400
    naming ``label``, the labels (``labels_field``) or ``guidance`` for what the model cannot take."""
    try:
        loaded.check_guidance(guidance)
        return loaded.sample_labels(n, label, labels, labels_field)
    except InputError as exc:
        raise ApiError(400, exc.field, str(exc), f"invalid_{exc.field}") from None


def _sample_count(loaded: LoadedModel, n: int, steps: int | None, field: str = "n") -> int:
    """The step count a request for n samples runs (``steps``: the one asked for, None: the
    sampler's own), or ApiError: 422 for a model that cannot sample, 400 naming ``steps`` for a
    count its sampler cannot run (the runtime's check), and 400 when n x steps, the rows its
    graph calls take, exceeds the per-request row limit (naming ``steps`` where the model's own
    count would have fitted, else ``field``). Steps weigh as k does (draw_weight: the next power
    of two), so the published document states the accepted (n, steps) exactly (services.openapi)."""
    _can_sample(loaded)
    try:
        count = loaded.steps(steps)
    except InputError as exc:
        raise ApiError(400, exc.field, str(exc), f"invalid_{exc.field}") from None
    weight = draw_weight(count)
    limit = sample_limit(loaded)
    if n * weight > limit:
        at_fault = "steps" if n * draw_weight(loaded.steps()) <= limit else field
        counted = f" (counted as {weight}, the next power of two)" if weight != count else ""
        raise ApiError(
            400,
            at_fault,
            f"{at_fault}: {n} samples x {count} sampling steps{counted} = {n * weight} rows exceeds "
            f"{limit}{limit_source(limit)}",
            f"invalid_{at_fault}",
        )
    return count


def _fits_a_body(loaded: LoadedModel, rows: int) -> None:
    """400 naming x for more rows than the model's published ``body_rows``."""
    cap = row_cap(loaded)
    if rows > cap:
        raise ApiError(
            400,
            "x",
            f"x: at most {cap} rows of {loaded.dim} values for {loaded.stored.tag} (GET /models: body_rows, "
            f"the rows whose widest JSON fits a JSON body's {MAX_JSON_BYTES} bytes); got {rows}: "
            "split them, or send binary tensors over V2",
            "invalid_x",
        )


async def _checked(rows: Any, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)`` of a request's ``rows``: on the event loop up to CHECK_INLINE_VALUES
    values, in a worker thread above (a large body's check would hold every other request)."""
    if getattr(rows, "size", 0) > CHECK_INLINE_VALUES:
        return await anyio.to_thread.run_sync(check, *args)
    return check(*args)


async def _call(fn: Callable[[], Any], loaded: LoadedModel, role: str, rows: int, calls: int = 1) -> Any:
    """``fn()``, on the event loop if it is expected to be short enough (INLINE_MS, ALONE_MS),
    else in a worker thread. Unmeasured calls go to a thread, and so does everything with
    adaptive batching on: a batch forms from calls waiting in threads, and one waiting on the
    event loop would hold every other request up until its batch ran. A computation stopped
    because its answer is no longer wanted (registry.runtime.budget.Cancelled) is a 504."""
    expected = None if BATCH_MAX_ROWS > 0 else loaded.expected_seconds(role, rows, calls)
    try:
        if expected is not None and (
            expected * 1000 <= INLINE_MS or (expected * 1000 <= ALONE_MS and TRAFFIC.alone())
        ):
            return fn()
        async with watching():
            return await anyio.to_thread.run_sync(fn)
    except Cancelled as exc:
        raise ApiError(504, None, f"the computation was stopped: {exc}", "cancelled") from None


def _in_time(plan: Plan, field: str, what: str) -> None:
    """429 naming ``field`` when this worker's measured rate says ``plan`` cannot finish before
    the deadline (a task's, for a task): refused at once, never started and then abandoned."""
    seconds = work_seconds()
    if seconds is not None and plan.seconds > seconds:
        task = "" if IN_TASK.get() else ", submit it as a task (POST /NAME/submit)"
        raise ApiError(
            429,
            field,
            f"{field}: {what} is planned to take {plan.seconds:.0f} s at this worker's measured rate "
            f"({plan.rows} graph rows), past the {seconds:g}-s deadline; retry when it is "
            f"less busy{task}, or make it smaller",
            "too_slow",
            headers={"retry-after": str(max(1, round(plan.seconds - seconds)))},
        )


def _plan(make: Callable[[], Plan]) -> Plan:
    try:
        return make()
    except BudgetError as exc:
        # Past a published limit: say where the limits are (services.limits publishes none that
        # the budget refuses).
        message = f"{exc} (GET /models: sample_n, score_rows, latent_rows, two_sample_rows)"
        raise ApiError(400, exc.field, message, f"invalid_{exc.field}") from None
    except CapabilityError as exc:
        raise ApiError(422, exc.field, str(exc), "missing_capability") from None


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    info = {
        **loaded.stored.summary(),
        **sampling(loaded.stored),
        **latent.latent_info(loaded.stored),
        **conditioning(loaded.stored),
    }
    shape = image_shape(loaded.stored.data.get("image_shape"))
    info["image_shape"] = list(shape) if shape else None
    sampler = loaded.stored.graph("sampler") is not None
    limits = {
        "sample_rows": sample_limit(loaded, task=False) if sampler else None,
        "score_rows": {k: score_limit(loaded, k, task=False) for k in loaded.kinds},
        "task_sample_rows": sample_limit(loaded, task=True) if sampler else None,
        "task_score_rows": {k: score_limit(loaded, k, task=True) for k in loaded.kinds},
        "body_rows": row_cap(loaded),
        "latent_rows": latent_limits(loaded),
        "sample_n": sample_n(loaded),
        "two_sample_rows": two_sample_rows(loaded),
    }
    return ModelInfo(**info, **limits, kinds=loaded.kinds, provider=loaded.provider).model_dump()


class GenregService(bentoml.Service):
    """BentoML's service, with genreg's routes answered in front of BentoML's middlewares.

    ``bentoml.service(service_class=...)`` is BentoML's way to customise the service; its app is
    wrapped, not changed: genreg's routes (services.routes) first, each request through TRAFFIC
    once (with the limits BentoML's configuration gives the service's ``traffic``) and then the
    token check; everything else to BentoML's app behind the same token check.
    """

    def to_asgi(self, is_main: bool = True) -> Any:
        bentoml_app = super().to_asgi(is_main)  # also merges BentoML's configuration into ours
        traffic = BentoMLContainer.config.services[self.name].get().get("traffic") or {}
        TRAFFIC.configure(traffic.get("max_concurrency"), traffic.get("timeout"))

        def guard(app: Any) -> Any:
            return BearerAuth(app, endpoints=API_PATHS, endpoint_of=endpoint_of)

        return ApiRoutes(
            guard(bentoml_app),
            service=bentoml.get_current_service,
            max_body_bytes=MAX_BODY_BYTES,
            max_json_bytes=MAX_JSON_BYTES,
            auth=BearerAuth.enabled(),
            traffic=TRAFFIC,
            guard=guard,
            traced=tracing(),
        )


def tracing() -> Callable[[Any], Any] | None:
    """OpenTelemetry's ASGI middleware with BentoML's tracer and excluded URLs, where BentoML's
    configuration names a span exporter (``tracing.exporter_type``); else None: no span is ever
    exported then, and the middleware cost a batch-1 request 15% of its time."""
    if not BentoMLContainer.config.tracing.exporter_type.get():
        return None
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    def traced(app: Any) -> Any:
        return OpenTelemetryMiddleware(
            app,
            excluded_urls=BentoMLContainer.tracing_excluded_urls.get(),
            default_span_details=None,
            tracer_provider=BentoMLContainer.tracer_provider.get(),
        )

    return traced


@bentoml.service(
    service_class=GenregService,
    name="genreg",
    workers=WORKERS,
    traffic={"timeout": TIMEOUT_SECONDS, "max_concurrency": MAX_CONCURRENCY},
)
class Genreg:
    """Serves every model in the store (or GENREG_MODELS) from ONNX Runtime sessions."""

    def __init__(self) -> None:
        self.heavy = HeavyGate(MAX_HEAVY)
        self.tasks = Tasks()
        self.cache = ModelCache(threads=ORT_THREADS, on_load=self._instrument, on_retire=self._retire)
        start = time.perf_counter()
        remote = os.environ.get("GENREG_MODELS_FROM") or None
        if remote:
            # A replica that starts with an empty store pulls before it loads (and is not ready
            # until then); `genreg serve --models-from` has usually pulled already.
            try:
                for tag in pull_new(remote, allow_list()):
                    log.info("pulled %s from the remote store", tag)
            except StoreError as exc:
                log.warning("could not pull from the remote store at start-up: %s", exc)
        self.cache.load_all()
        log.info(
            "loaded %d models in %.2fs on %s",
            len(self.cache.loaded),
            time.perf_counter() - start,
            self.cache.providers,
        )
        # The live registry: new versions stored while the service runs are served without a
        # restart (services.cache). 0 turns the watcher off; the repository API still works.
        self.watcher = (
            Watcher(self.cache, POLL_SECONDS, remote, REMOTE_POLL_SECONDS) if POLL_SECONDS > 0 else None
        )
        if self.watcher is not None:
            self.watcher.start()

    @asynccontextmanager
    async def _admit(self, plan: Plan, field: str, what: str) -> AsyncIterator[None]:
        """Admission by the request's planned work: refused at once (429 naming ``field``) when
        this worker's measured rate says it cannot finish before the deadline; a heavy-request
        slot when what it allocates (its plan's size) is over HEAVY_BYTES: taken at once or
        refused (429), where a task waits for one."""
        _in_time(plan, field, what)
        if plan.size <= HEAVY_BYTES:
            yield
            return
        async with self._slot(field, what):
            yield

    @asynccontextmanager
    async def _slot(self, field: str, what: str) -> AsyncIterator[None]:
        """A heavy-request slot: taken at once or refused (429 naming ``field``); a task waits.
        From here on large buffers go back to the system when freed, so this request's chunks
        cannot pile up in the allocator's heaps (registry.runtime.budget); set before its first
        chunk, and never for a worker that only answers light requests."""
        return_large_frees()
        if IN_TASK.get():
            async with self.heavy.waiting():
                yield
        else:
            with self.heavy.admit(field, what):
                yield

    @staticmethod
    async def _release(plan: Plan, always: bool = False) -> None:
        """After a heavy request, give the memory it freed back to the system (off the loop)."""
        if always or plan.size > HEAVY_BYTES:
            await anyio.to_thread.run_sync(release_memory)

    def __is_ready__(self) -> bool:
        return self.cache.ready

    @staticmethod
    def _instrument(loaded: LoadedModel) -> None:
        name = loaded.stored.name

        def observe(graph: str, seconds: float) -> None:
            INFERENCE_SECONDS.labels(model=name, graph=graph).observe(seconds)

        loaded.on_run = observe
        if BATCH_MAX_ROWS > 0:
            loaded.runners = {f: Batcher(run, BATCH_MAX_ROWS) for f, run in loaded.runners.items()}

    @staticmethod
    def _retire(loaded: LoadedModel) -> None:
        MODEL_INFO.labels(
            model=loaded.stored.name, version=loaded.stored.version, provider=loaded.provider
        ).set(0)

    def resolve(self, ref: str) -> LoadedModel:
        """The loaded model for ``name`` or ``name:version``; ApiError 404 (unknown) or 409 (corrupt)."""
        try:
            loaded = self.cache.resolve(ref)
        except ModelNotFound as exc:
            raise ApiError(404, "model", str(exc), "unknown_model") from None
        except StoreError as exc:
            raise ApiError(409, "model", str(exc), "store_error") from None
        return loaded

    async def task(self, api: str, action: str, raw: bytes, task_id: str | None, owner: str) -> Response:
        """The answer to a task path of ``api`` (services.tasks)."""
        return await self.tasks.answer(self, api, action, raw, task_id, owner)

    def served(self) -> list[str]:
        """The names this instance serves (their newest versions)."""
        return sorted(self.cache.newest)

    def ready(self) -> bool:
        return self.cache.ready

    def described(self) -> list[dict[str, Any]]:
        """What the OpenAPI document needs to state each stored version's limits exactly (its
        width, levels, kinds, sampler, its steps and their range, and the bound's estimates),
        from the stored metadata: nothing is loaded."""
        out = []
        for stored in list_models():
            if stored.name not in self.cache.newest:
                continue
            sampler = stored.graph("sampler")
            model = self.cache.loaded.get(stored.tag, stored)
            kinds = model_kinds(stored.capabilities, stored_classes(stored.data))
            out.append(
                {
                    "name": stored.name,
                    "tag": stored.tag,
                    "newest": self.cache.newest[stored.name] == stored.tag,
                    "dim": int(stored.data["dim"]),
                    "levels": stored.data.get("levels"),
                    "image": bool(stored.data.get("image_shape")),
                    "kinds": kinds,
                    "sampler": sampler is not None,
                    "sample_rows": sample_limit(model, task=False),
                    "score_rows": {kind: score_limit(model, kind, task=False) for kind in kinds},
                    "task_sample_rows": sample_limit(model, task=True),
                    "task_score_rows": {kind: score_limit(model, kind, task=True) for kind in kinds},
                    "conditional_discriminator": _conditional(stored.graph("discriminator")),
                    "body_rows": row_cap(stored),
                    "latent_rows": latent_limits(model),
                    "sample_n": sample_n(model),
                    "two_sample_rows": two_sample_rows(model),
                    **sampling(stored),
                    **latent.latent_info(stored),
                    **conditioning(stored),
                }
            )
        return out

    def versions(self, name: str) -> list[str]:
        """The stored versions of a served name, newest first (each may be asked for by version)."""
        return [m.version for m in list_models() if m.name == name]

    def _parsed(self, endpoint: str, body: dict[str, Any], may_hold_bools: bool) -> tuple[Any, LoadedModel]:
        """The validated request of an API endpoint and its model; ApiError otherwise."""
        ref = body.get("model")
        if isinstance(ref, str) and MODEL_PATTERN.fullmatch(ref):
            # The model is the resource: an unknown one is 404 whatever else the body holds
            # (a body's other faults are the model's to judge), as the document states.
            self.resolve(ref)
        schema = {
            "sample": SampleRequest,
            "score": ScoreRequest,
            "two_sample_test": TwoSampleRequest,
            "encode": EncodeRequest,
            "decode": DecodeRequest,
        }
        req = validate(schema[endpoint], body, may_hold_bools)
        loaded = self.resolve(req.model)
        x = getattr(req, "x", None)
        if x is not None:
            _fits_a_body(loaded, len(x))
        return req, loaded

    async def handle(
        self,
        endpoint: str,
        body: dict[str, Any],
        *,
        may_hold_bools: bool = True,
        params: dict[str, str] | None = None,
    ) -> Response:
        """The answer to one parsed request body (``params``: values from the path), or the error's JSON."""
        try:
            if endpoint.startswith("repository_"):
                return json_response(await self._repository(endpoint, body, (params or {}).get("model")))
            if endpoint == "models":
                return json_response({"models": [model_info(m) for m in self.cache.models()]})
            req, loaded = self._parsed(endpoint, body, may_hold_bools)
            if endpoint == "sample":
                answer = await self.sample(
                    loaded,
                    req.n,
                    seed=req.seed,
                    temperature=req.temperature,
                    steps=req.steps,
                    then=self._sample_answer(req, loaded),
                    label=req.label,
                    labels=req.labels,
                    guidance=req.guidance,
                )
                return json_response(answer)
            if endpoint == "score":
                result = await self.score(
                    loaded, req.x, req.kind, k=req.k, seed=req.seed, estimate=req.estimate, labels=req.labels
                )
                return json_response(result.as_dict())
            if endpoint == "encode":
                encoded = await self.encode(loaded, req.x, seed=req.seed, sample=req.sample)
                return json_response(encoded.as_dict())
            if endpoint == "decode":
                x = await self.decode(loaded, req.z, seed=req.seed, sample=req.sample)
                return json_response({"model": loaded.stored.tag, "x": x})
            # Always heavy: the test holds (x + model rows)^2 matrices. Its rows are checked off
            # the event loop (thousands of values).
            real, n, count, plan = await anyio.to_thread.run_sync(self._two_sample_check, req, loaded)
            async with self._slot("x", "a two-sample test"):
                try:
                    async with watching():
                        answer = await anyio.to_thread.run_sync(self._two_sample, req, loaded, real, n, count)
                except Cancelled as exc:
                    raise ApiError(504, None, f"the computation was stopped: {exc}", "cancelled") from None
            await self._release(plan, always=True)
            return json_response(answer)
        except ApiError as err:
            return error_response(endpoint, err)
        except Cancelled as exc:  # stopped before its computation began (a task waiting for a slot)
            return error_response(
                endpoint, ApiError(504, None, f"the computation was stopped: {exc}", "cancelled")
            )

    def check(self, endpoint: str, body: dict[str, Any], may_hold_bools: bool = True) -> Work:
        """Every check the synchronous call makes (validation, the model, its limits and planned
        time, judged by the deadline of the current context: a task's, when submitted as one),
        none of its work: ApiError as that call answers. What it will run, for a task's
        submission and progress."""
        req, loaded = self._parsed(endpoint, body, may_hold_bools)
        tag = loaded.stored.tag
        if endpoint == "sample":
            self._sample_answer(req, loaded)
            _sample_labels(loaded, req.n, req.label, req.labels, req.guidance)
            count, plan, what = self._sample_plan(loaded, req.n, req.steps)
            _in_time(plan, "n", what)
            return Work(tag, count, "steps", req.n)
        if endpoint == "score":
            checked, plan, field, what = self._score_check(
                loaded, req.x, req.kind, req.k, req.estimate, req.labels
            )
            _in_time(plan, field, what)
            unit = "draws" if checked.kind == "bound" else "rows"
            return Work(tag, checked.graph_rows, unit)
        _, n, count, _ = self._two_sample_check(req, loaded)
        return Work(tag, count, "steps", n)

    # --- the one sampling and scoring path of both protocols (genreg's and V2) ----------------
    @staticmethod
    def _sample_plan(
        loaded: LoadedModel, n: int, steps: int | None, field: str = "n"
    ) -> tuple[int, Plan, str]:
        """(step count, plan, what it is) of drawing n samples; ApiError for a request the model cannot take."""
        count = _sample_count(loaded, n, steps, field)
        # A step-loop sampler runs its graph once per step: its plan weighs the request by that.
        plan = _plan(lambda: loaded.plan_sample(n, count))
        return count, plan, f"{n} samples" + (f" x {count} steps" if count > 1 else "")

    async def sample(
        self,
        loaded: LoadedModel,
        n: int,
        *,
        seed: int | None,
        temperature: float,
        steps: int | None = None,
        protocol: str = "genreg",
        then: Callable[[np.ndarray, int], Any] | None = None,
        label: int | None = None,
        labels: Any = None,
        guidance: float | None = None,
        labels_field: str = "labels",
    ) -> Any:
        """n samples (float32 rows in data units), ``steps`` the sampler's count (None: its own);
        ApiError for a request the model cannot take. ``then(samples, steps run)`` makes the
        answer from them in the same call (a PNG grid is drawn off the event loop too)."""
        y = _sample_labels(loaded, n, label, labels, guidance, labels_field)
        count, plan, what = self._sample_plan(loaded, n, steps)
        draw = functools.partial(self._draw, loaded, n, seed, temperature, count, protocol, y, guidance)
        job = draw if then is None else lambda: then(draw(), count)
        async with self._admit(plan, "n", what):
            answer = await _call(job, loaded, "sampler", n * count, calls=count)
        await self._release(plan)
        return answer

    @staticmethod
    def _score_check(
        loaded: LoadedModel,
        x: Any,
        kind: str | None,
        k: int,
        estimate: str | None,
        labels: Any = None,
        labels_field: str = "labels",
    ) -> tuple[scoring.Checked, Plan, str, str]:
        """The checked request (registry.runtime.scoring.check, within the model's limit), its
        plan, and the field and words that name its size; ApiError for a refusal."""
        rows = int(x.shape[0]) if getattr(x, "ndim", 0) else 1
        field, what = ("k", f"{rows} rows x {k} draws") if k > 1 else ("x", f"{rows} rows")
        try:
            resolved = scoring.resolve_kind(loaded, kind)
            limit = score_limit(loaded, resolved)
            checked = scoring.check(
                loaded,
                x,
                resolved,
                k=k,
                max_draw_rows=limit,
                estimate=estimate,
                why=limit_source(limit),
                labels=labels,
                labels_field=labels_field,
            )
        except CapabilityError as exc:
            raise ApiError(422, exc.field, str(exc), "missing_capability") from None
        except InputError as exc:
            raise ApiError(400, exc.field, str(exc), f"invalid_{exc.field}") from None
        plan = _plan(
            lambda: loaded.plan_score(len(checked.rows), resolved, checked.k, loaded.dim, checked.passes)
        )
        return checked, plan, field, what

    async def score(
        self,
        loaded: LoadedModel,
        x: Any,
        kind: str | None,
        *,
        k: int,
        seed: int | None,
        estimate: str | None = None,
        protocol: str = "genreg",
        labels: Any = None,
        labels_field: str = "labels",
    ) -> Scores:
        """registry.runtime.scoring's check and compute, its refusals as ApiError (``labels_field``:
        what the request calls its labels)."""
        checked, plan, field, what = await _checked(
            x, self._score_check, loaded, x, kind, k, estimate, labels, labels_field
        )
        run = functools.partial(self._score, loaded, checked, seed, protocol, plan)
        async with self._admit(plan, field, what):
            role = "discriminator" if checked.kind == "discriminator" else "scorer"
            result = await _call(run, loaded, role, checked.graph_rows, calls=checked.passes)
        await self._release(plan)
        return result

    # --- the latent space: /encode, /decode (and V2's encode and decode) ----------------------
    @staticmethod
    def _latent_check(
        loaded: LoadedModel, operation: str, rows: Any, sample: bool | None
    ) -> tuple[latent.LatentRequest, Plan]:
        """registry.runtime.latent's check and plan of an encode or decode; ApiError for a refusal."""
        check = latent.check_encode if operation == "encode" else latent.check_decode
        try:
            checked = check(loaded, rows, sample)
        except CapabilityError as exc:
            raise ApiError(422, exc.field, str(exc), "missing_capability") from None
        except InputError as exc:
            raise ApiError(400, exc.field, str(exc), f"invalid_{exc.field}") from None
        field, limit = checked.spec.x_input or "x", latent_limits(loaded)[operation]
        if len(checked.rows) > limit:
            raise ApiError(
                400,
                field,
                f"{field}: {len(checked.rows)} rows exceeds {limit}, this model's {operation} limit: the rows "
                f"whose JSON fits a body, that it runs in half the {TRAFFIC.timeout:g}-s deadline at its "
                "measured rate, and that fit the request memory budget (GET /models: latent_rows)",
                f"invalid_{field}",
            )
        return checked, _plan(lambda: latent.plan(loaded, checked))

    async def _latent(
        self,
        loaded: LoadedModel,
        operation: str,
        rows: Any,
        seed: int | None,
        sample: bool | None,
        protocol: str,
    ) -> Any:
        checked, plan = await _checked(rows, self._latent_check, loaded, operation, rows, sample)
        field = checked.spec.x_input or "x"
        run = latent.encode if operation == "encode" else latent.decode
        job = functools.partial(run, loaded, checked, seed, plan)
        async with self._admit(plan, field, f"{operation} of {len(checked.rows)} rows"):
            answer = await _call(job, loaded, checked.spec.role, len(checked.rows))
        await self._release(plan)
        ROWS.labels(model=loaded.stored.name, kind=operation, protocol=protocol).inc(len(checked.rows))
        return answer

    async def encode(
        self, loaded: LoadedModel, x: Any, *, seed: int | None, sample: bool | None, protocol: str = "genreg"
    ) -> latent.Encoded:
        """The latents of rows ``x`` (registry.runtime.latent.encode); ApiError for a refusal."""
        return await self._latent(loaded, "encode", x, seed, sample, protocol)

    async def decode(
        self, loaded: LoadedModel, z: Any, *, seed: int | None, sample: bool | None, protocol: str = "genreg"
    ) -> np.ndarray:
        """Rows in data units from latents ``z`` (registry.runtime.latent.decode); ApiError for a refusal."""
        return await self._latent(loaded, "decode", z, seed, sample, protocol)

    def _draw(
        self,
        loaded: LoadedModel,
        n: int,
        seed: int | None,
        temperature: float,
        steps: int,
        protocol: str,
        labels: np.ndarray | None = None,
        guidance: float | None = None,
    ) -> np.ndarray:
        x = loaded.sample(
            n, seed=seed, temperature=temperature, steps=steps, labels=labels, guidance=guidance
        )
        ROWS.labels(model=loaded.stored.name, kind="sample", protocol=protocol).inc(n)
        return x

    def _score(
        self, loaded: LoadedModel, checked: scoring.Checked, seed: int | None, protocol: str, plan: Plan
    ) -> Scores:
        result = scoring.compute(loaded, checked, seed, plan)
        ROWS.labels(model=loaded.stored.name, kind=result.kind, protocol=protocol).inc(result.rows)
        return result

    # --- /v2/repository/... (the live registry's explicit control) ---------------------------
    async def _repository(self, endpoint: str, body: dict[str, Any], name: str | None) -> Any:
        if endpoint == "repository_index":
            req = validate(RepositoryIndexRequest, body, False)
            entries = await anyio.to_thread.run_sync(self.cache.index)
            return [
                RepositoryEntry(**vars(e)).model_dump()
                for e in entries
                if not req.ready or e.state == "READY"
            ]
        if not MODEL_CONTROL:
            raise ApiError(
                403,
                None,
                f"loading and unloading models over HTTP is off; start the service with GENREG_MODEL_CONTROL=1 "
                f"(and GENREG_API_TOKEN) to allow {endpoint.removeprefix('repository_')}",
                "model_control_off",
            )
        validate(RepositoryLoadRequest, body, False)
        if name is None or not re.match(MODEL_NAME, name):
            raise ApiError(400, "model", f"model: {name!r} is not a model name", "invalid_model")
        try:
            if endpoint == "repository_load":
                loaded = await anyio.to_thread.run_sync(self.cache.load, name)
                return RepositoryAnswer(model=loaded.stored.tag, state="READY").model_dump()
            if not await anyio.to_thread.run_sync(self.cache.unload, name) and not any(
                e.name == name for e in self.cache.index()
            ):
                raise ModelNotFound(f"no model named {name!r} in the store")
            return RepositoryAnswer(model=name, state="UNLOADED").model_dump()
        except ModelNotFound as exc:
            raise ApiError(404, "model", str(exc), "unknown_model") from None
        except StoreError as exc:
            raise ApiError(409, "model", str(exc), "store_error") from None

    # --- /sample ---------------------------------------------------------------------------
    @staticmethod
    def _sample_answer(
        req: SampleRequest, loaded: LoadedModel
    ) -> Callable[[np.ndarray, int], dict[str, Any]]:
        """How /sample's answer is made from the samples; ApiError now for a format the data lacks."""
        shape = loaded.stored.data.get("image_shape")
        if req.format == "png" and not shape:
            raise ApiError(
                400,
                "format",
                f"format: png is unavailable, {loaded.stored.tag} was not trained on images",
                "invalid_format",
            )
        sampler = loaded.stored.graph("sampler")
        looped = sampler is not None and sampler.loop is not None

        def answer(x: np.ndarray, steps: int) -> dict[str, Any]:
            out: dict[str, Any] = {"model": loaded.stored.tag}
            if looped:
                out["steps"] = steps
            if req.format == "png":
                high = loaded.stored.data.get("high") or float(np.max(x))
                out["png"] = base64.b64encode(png_grid(x, tuple(shape), high=high)).decode()
            else:
                out["samples"] = x
            return out

        return answer

    # --- /two_sample_test -------------------------------------------------------------------
    def _two_sample_check(
        self, req: TwoSampleRequest, loaded: LoadedModel
    ) -> tuple[np.ndarray, int, int, Plan]:
        """(real rows, samples to draw, their steps, the sampling plan) of a two-sample test that
        passed every check; ApiError otherwise."""
        _can_sample(loaded)
        try:
            real = check_rows(req.x, loaded.stored.data, what="x").astype(np.float64)
        except InputError as exc:
            raise ApiError(400, exc.field, str(exc), "invalid_x") from None
        n = req.n_model or len(real)
        field = "n_model" if req.n_model else "x"
        count = _sample_count(loaded, n, None, field)
        held = two_sample_held(loaded.dim, len(real))
        plan = _plan(lambda: loaded.plan_sample(n, count, held=held, field=field))
        _in_time(plan, field, f"a two-sample test drawing {n} samples x {count} steps")
        if not two_sample_fits(loaded, len(real), n, req.test, req.permutations):
            raise ApiError(
                400,
                field,
                f"{field}: a {req.test} test of {len(real)} + {n} rows of {loaded.dim} values would not fit "
                f"the {loaded.budget >> 20} MiB a request may use (GENREG_REQUEST_MEMORY; GET /models: "
                "two_sample_rows)",
                f"invalid_{field}",
            )
        return real, n, count, plan

    def _two_sample(
        self, req: TwoSampleRequest, loaded: LoadedModel, real: np.ndarray, n: int, count: int
    ) -> dict[str, Any]:
        fake = self._draw(loaded, n, req.seed, 1.0, count, "genreg").astype(np.float64)
        with np.errstate(all="ignore"):
            if req.test == "mmd":
                result = mmd_test(real, fake, permutations=req.permutations, seed=req.seed)
            else:
                result = c2st(real, fake, seed=req.seed)
        if not (np.isfinite(result["statistic"]) and np.isfinite(result["p_value"])):
            # Squared distances of values near 1e154 overflow: the test means nothing then.
            raise ApiError(
                400, "x", "x: values too large for the test (its statistic overflows)", "invalid_x"
            )
        return {"model": loaded.stored.tag, **result}
