"""The BentoML service: /sample, /score, /models over the model store, ONNX Runtime only.

Requests are validated by :mod:`services.schemas`; every problem is answered with a 4xx
JSON body ``{"error", "field"}`` (404 for an unknown model, 422 for a kind the model lacks,
400 for anything else wrong in the body), counted in ``genreg_errors_total``, and logged
as one line, never as a traceback. HTTP requests reach :meth:`Genreg.handle` through the
gate (services.gate), which reads and parses each body once; the ``bentoml.api`` methods
below declare the same endpoints to BentoML and answer through the same handler.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from typing import Any

import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from registry.images import png_grid
from registry.inference import CapabilityError, LoadedModel, bound_estimates
from registry.store import ModelNotFound, StoreError
from registry.two_sample import c2st, mmd_test
from registry.units import bits_per_dim, score_summary
from registry.validation import InputError, check_input
from services.batching import Batcher
from services.errors import ApiError, error_response, json_response
from services.gate import BOUND, ApiGate
from services.metrics import INFERENCE_SECONDS, MODEL_INFO, ROWS
from services.runtime import ModelCache
from services.schemas import MAX_DRAW_ROWS, ModelInfo, SampleRequest, ScoreRequest, TwoSampleRequest

log = logging.getLogger("genreg.service")
WORKERS = int(os.environ.get("GENREG_WORKERS", "1"))
# One intra-op thread per session by default: on the 2-core machines measured (see
# benchmarks/RESULTS.md) it was faster at batch 1 (154 vs 236 us) and at batch 1024 (16.6 vs
# 24.9 ms) than ONNX Runtime's default pool, which spins against the HTTP workers for the cores.
ORT_THREADS = int(os.environ.get("GENREG_ORT_THREADS", "1"))
# Adaptive batching of concurrent ONNX Runtime calls per graph (see services.batching and
# benchmarks/RESULTS.md for when it pays off); 0 turns it off.
BATCH_MAX_ROWS = int(os.environ.get("GENREG_BATCH_MAX_ROWS", "0"))
MAX_BODY_BYTES = int(os.environ.get("GENREG_MAX_BODY_BYTES", str(64 * 1024 * 1024)))
# Requests up to this many rows run on the event loop: for them a thread hop costs more than
# the ONNX Runtime call itself (about 150 us at batch 1); larger ones go to a worker thread.
INLINE_ROWS = int(os.environ.get("GENREG_INLINE_ROWS", "64"))


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        top = str(first["loc"][0]) if first["loc"] else "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        # The reason is a metric label: only names the schema defines, never a client's
        # invented field name (each would be a new time series, without bound).
        reason = f"invalid_{top}" if top in model.model_fields else "unknown_field"
        if first["type"] != "extra_forbidden" and top not in model.model_fields:
            reason = "invalid_body"
        raise ApiError(400, top, f"{field}: {message}", reason) from None


async def _call(fn: Any, req: Any, rows: int) -> Any:
    if rows <= INLINE_ROWS:
        return fn(req)
    return await anyio.to_thread.run_sync(fn, req)


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    return ModelInfo(**loaded.stored.summary(), kinds=loaded.kinds, provider=loaded.provider).model_dump()


@bentoml.service(name="genreg", workers=WORKERS, traffic={"timeout": 60, "max_concurrency": 256})
class Genreg:
    """Serves every model in the store (or GENREG_MODELS) from ONNX Runtime sessions."""

    def __init__(self) -> None:
        self.cache = ModelCache(threads=ORT_THREADS)
        start = time.perf_counter()
        self.cache.load_all()
        for loaded in self.cache.loaded.values():
            self._instrument(loaded)
        BOUND.served = lambda: sorted(self.cache.newest)
        BOUND.handle = self.handle
        log.info(
            "loaded %d models in %.2fs on %s",
            len(self.cache.loaded),
            time.perf_counter() - start,
            self.cache.providers,
        )

    def __is_ready__(self) -> bool:
        return self.cache.ready

    @staticmethod
    def _instrument(loaded: LoadedModel) -> None:
        name = loaded.stored.name
        MODEL_INFO.labels(model=name, version=loaded.stored.version, provider=loaded.provider).set(1)

        def observe(graph: str, seconds: float) -> None:
            INFERENCE_SECONDS.labels(model=name, graph=graph).observe(seconds)

        loaded.on_run = observe
        if BATCH_MAX_ROWS > 0:
            loaded.runners = {f: Batcher(run, BATCH_MAX_ROWS) for f, run in loaded.runners.items()}

    def _resolve(self, ref: str) -> LoadedModel:
        try:
            loaded = self.cache.resolve(ref)
        except ModelNotFound as exc:
            raise ApiError(404, "model", str(exc), "unknown_model") from None
        except StoreError as exc:
            raise ApiError(409, "model", str(exc), "store_error") from None
        if loaded.on_run is None:
            self._instrument(loaded)
        return loaded

    async def handle(self, endpoint: str, body: dict[str, Any]) -> Response:
        """The answer to one parsed request body: the result, or the error's JSON."""
        try:
            if endpoint == "sample":
                req = _validate(SampleRequest, body)
                return json_response(await _call(self._sample, req, req.n))
            if endpoint == "score":
                req = _validate(ScoreRequest, body)
                return json_response(await _call(self._score, req, len(req.x) * req.k))
            if endpoint == "two_sample_test":
                req = _validate(TwoSampleRequest, body)
                return json_response(await anyio.to_thread.run_sync(self._two_sample, req))
            return json_response({"models": [model_info(m) for m in self.cache.models()]})
        except ApiError as err:
            return error_response(endpoint, err)

    # --- /sample ---------------------------------------------------------------------------
    def _sample(self, req: SampleRequest) -> dict[str, Any]:
        loaded = self._resolve(req.model)
        shape = loaded.stored.data.get("image_shape")
        if req.format == "png" and not shape:
            raise ApiError(
                400,
                "format",
                f"{loaded.stored.tag} was not trained on images: png is unavailable",
                "invalid_format",
            )
        try:
            x = loaded.sample(req.n, seed=req.seed, temperature=req.temperature)
        except CapabilityError as exc:
            raise ApiError(422, "model", str(exc), "missing_capability") from None
        ROWS.labels(model=loaded.stored.name, kind="sample").inc(req.n)
        out: dict[str, Any] = {"model": loaded.stored.tag}
        if req.format == "png":
            high = loaded.stored.data.get("high") or float(np.max(x))
            out["png"] = base64.b64encode(png_grid(x, tuple(shape), high=high)).decode()
        else:
            out["samples"] = x
        return out

    # The body arrives whole (a positional-only parameter is BentoML's root input) so that
    # validation, and its errors, are ours.
    @bentoml.api(route="/sample")
    async def sample(self, body: dict[str, Any], /) -> Any:
        """Draw `n` samples: {"model", "n", "seed"?, "temperature"?, "format"?: "json"|"png"}."""
        return await self.handle("sample", body)

    # --- /score ----------------------------------------------------------------------------
    def _score(self, req: ScoreRequest) -> dict[str, Any]:
        loaded = self._resolve(req.model)
        kind = req.kind or (loaded.kinds[0] if loaded.kinds else None)
        if kind not in loaded.kinds:
            raise ApiError(
                422,
                "kind",
                f"{loaded.stored.tag} cannot score kind {kind!r}; it has: {', '.join(loaded.kinds) or 'none'}",
                "missing_capability",
            )
        try:
            x = check_input(req.x, loaded.stored.data, what="x")
        except InputError as exc:
            raise ApiError(400, exc.field, str(exc), "invalid_x") from None
        if req.k > 1 and kind != "bound":
            raise ApiError(400, "k", f"k > 1 applies to kind 'bound' only, not {kind!r}", "invalid_k")
        if len(x) * req.k > MAX_DRAW_ROWS:
            raise ApiError(400, "k", f"rows x k = {len(x) * req.k} exceeds {MAX_DRAW_ROWS}", "invalid_k")
        out: dict[str, Any] = {"model": loaded.stored.tag, "kind": kind}
        if kind == "bound":
            elbo, iwae = bound_estimates(loaded.log_weights(x, req.seed, req.k))
            out.update(scores=iwae, bits_per_dim=bits_per_dim(iwae, loaded.dim), k=req.k)
            out.update(score_summary(iwae, loaded.dim))
            if req.k > 1:
                out["elbo"] = elbo
                out.update(score_summary(elbo, loaded.dim, prefix="elbo_"))
        else:
            kind, scores, bpd = loaded.score(x, kind, seed=req.seed)
            out["scores"] = scores
            out.update(score_summary(scores, loaded.dim if bpd is not None else None))
            if bpd is not None:
                out["bits_per_dim"] = bpd
        ROWS.labels(model=loaded.stored.name, kind=kind).inc(len(x))
        return out

    @bentoml.api(route="/score")
    async def score(self, body: dict[str, Any], /) -> Any:
        """Score rows: {"model", "x": [[...]], "kind"?: "log_prob"|"bound"|"discriminator", "seed"?, "k"?}.

        For a bound with k > 1 noise draws per row, "scores" is the importance-weighted bound
        log mean_k w_k and "elbo" the plain average mean_k log w_k; both are lower bounds.
        """
        return await self.handle("score", body)

    # --- /two_sample_test -------------------------------------------------------------------
    def _two_sample(self, req: TwoSampleRequest) -> dict[str, Any]:
        loaded = self._resolve(req.model)
        if loaded.stored.graph("sampler") is None:
            raise ApiError(422, "model", f"{loaded.stored.tag} cannot sample", "missing_capability")
        try:
            real = check_input(req.x, loaded.stored.data, what="x").astype(np.float64)
        except InputError as exc:
            raise ApiError(400, exc.field, str(exc), "invalid_x") from None
        fake = loaded.sample(req.n_model or len(real), seed=req.seed).astype(np.float64)
        ROWS.labels(model=loaded.stored.name, kind="sample").inc(len(fake))
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

    @bentoml.api(route="/two_sample_test")
    async def two_sample_test(self, body: dict[str, Any], /) -> Any:
        """Two-sample test of real rows against model samples:
        {"model", "x", "test": "mmd"|"c2st", "n_model"?, "seed"?, "permutations"?}."""
        return await self.handle("two_sample_test", body)

    # --- /models (POST; GET /models is answered by the gate) ---------------------------------
    @bentoml.api(route="/models")
    async def models(self, body: dict[str, Any] | None = None, /) -> Any:
        """The served models: name, version, family, capabilities, score kinds, data, metrics."""
        return await self.handle("models", {})


Genreg.add_asgi_middleware(ApiGate, max_body_bytes=MAX_BODY_BYTES)
