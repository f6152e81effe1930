"""The BentoML service: /sample, /score, /models over the model store, ONNX Runtime only.

Requests are validated by :mod:`services.schemas`; every problem is answered with a 4xx
JSON body ``{"error", "field"}`` (404 for an unknown model, 422 for a kind the model lacks,
400 for anything else wrong in the body), counted in ``genreg_errors_total``, and logged
as one line, never as a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import anyio
import bentoml
import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from registry.images import png_grid
from registry.inference import CapabilityError, LoadedModel, bound_estimates
from registry.store import ModelNotFound, StoreError
from registry.two_sample import c2st, mmd_test
from registry.units import bits_per_dim, score_summary
from registry.validation import InputError, check_input
from services.batching import Batcher
from services.metrics import ERRORS, INFERENCE_SECONDS, MODEL_INFO, ROWS
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


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.reason = status, field, message, reason


def _error_response(endpoint: str, err: ApiError) -> JSONResponse:
    ERRORS.labels(endpoint=endpoint, reason=err.reason).inc()
    log.info("%s %d %s: %s", endpoint, err.status, err.field or "-", err.message)
    return JSONResponse({"error": err.message, "field": err.field}, status_code=err.status)


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        top = str(first["loc"][0]) if first["loc"] else "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise ApiError(400, top, f"{field}: {message}", f"invalid_{top}") from None


# Requests up to this many rows run on the event loop: for them a thread hop costs more than
# the ONNX Runtime call itself (about 150 us at batch 1); larger ones go to a worker thread.
INLINE_ROWS = int(os.environ.get("GENREG_INLINE_ROWS", "64"))


async def _call(fn: Any, req: Any, rows: int) -> Any:
    if rows <= INLINE_ROWS:
        return fn(req)
    return await anyio.to_thread.run_sync(fn, req)


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    return ModelInfo(**loaded.stored.summary(), kinds=loaded.kinds, provider=loaded.provider).model_dump()


def _list_models(cache: ModelCache) -> list[dict[str, Any]]:
    return [model_info(m) for m in cache.models()]


_CACHE: list[ModelCache] = []  # the worker's cache, for the GET routes below


MAX_BODY_BYTES = int(os.environ.get("GENREG_MAX_BODY_BYTES", str(64 * 1024 * 1024)))
API_PATHS = {
    "/sample": "sample",
    "/score": "score",
    "/models": "models",
    "/two_sample_test": "two_sample_test",
}


STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


def _static(path: str) -> Response:
    """The gallery page and its assets; only files that exist in services/static are served."""
    name = "index.html" if path in ("/", "/ui") else path.removeprefix("/static/")
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in files:
        return JSONResponse({"error": f"no such file: {name}", "field": None}, status_code=404)
    file = files[name]
    return Response(file.read_bytes(), media_type=MEDIA_TYPES.get(file.suffix, "application/octet-stream"))


class ApiGate:
    """ASGI middleware in front of BentoML's router.

    It answers GET /models itself (BentoML's API routes are POST only), and for POST to our
    APIs refuses an oversized body (413) or one that is not a JSON object (400) before
    BentoML's parser would turn it into a 500 with a traceback. A good body is replayed.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        if scope["method"] == "GET" and path == "/models":
            models = _list_models(_CACHE[0]) if _CACHE else []
            await JSONResponse({"models": models})(scope, receive, send)
            return
        if scope["method"] == "GET" and (path in ("/", "/ui") or path.startswith("/static/")):
            await _static(path)(scope, receive, send)
            return
        endpoint = API_PATHS.get(path)
        if scope["method"] != "POST" or endpoint is None:
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                err = ApiError(413, "body", f"the request body exceeds {MAX_BODY_BYTES} bytes", "too_large")
                await _error_response(endpoint, err)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if path != "/models" or body.strip():
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                parsed = None
            if not isinstance(parsed, dict):
                err = ApiError(400, "body", "the request body must be a JSON object", "invalid_json")
                await _error_response(endpoint, err)(scope, receive, send)
                return
        else:
            body = b"{}"
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@bentoml.service(name="genreg", workers=WORKERS, traffic={"timeout": 60, "max_concurrency": 256})
class Genreg:
    """Serves every model in the store (or GENREG_MODELS) from ONNX Runtime sessions."""

    def __init__(self) -> None:
        self.cache = ModelCache(threads=ORT_THREADS)
        start = time.perf_counter()
        self.cache.load_all()
        for loaded in self.cache.loaded.values():
            self._instrument(loaded)
        _CACHE[:] = [self.cache]
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
            out["samples"] = x.tolist()
        return out

    # The body arrives whole (a positional-only parameter is BentoML's root input) so that
    # validation, and its errors, are ours.
    @bentoml.api(route="/sample")
    async def sample(self, body: dict[str, Any], /) -> Any:
        """Draw `n` samples: {"model", "n", "seed"?, "temperature"?, "format"?: "json"|"png"}."""
        try:
            req = _validate(SampleRequest, body)
            return JSONResponse(await _call(self._sample, req, req.n))
        except ApiError as err:
            return _error_response("sample", err)

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
            out.update(scores=iwae.tolist(), bits_per_dim=bits_per_dim(iwae, loaded.dim).tolist(), k=req.k)
            out.update(score_summary(iwae, loaded.dim))
            if req.k > 1:
                out["elbo"] = elbo.tolist()
                out.update(score_summary(elbo, loaded.dim, prefix="elbo_"))
        else:
            kind, scores, bpd = loaded.score(x, kind, seed=req.seed)
            out["scores"] = scores.tolist()
            out.update(score_summary(scores, loaded.dim if bpd is not None else None))
            if bpd is not None:
                out["bits_per_dim"] = bpd.tolist()
        ROWS.labels(model=loaded.stored.name, kind=kind).inc(len(x))
        return out

    @bentoml.api(route="/score")
    async def score(self, body: dict[str, Any], /) -> Any:
        """Score rows: {"model", "x": [[...]], "kind"?: "log_prob"|"bound"|"discriminator", "seed"?, "k"?}.

        For a bound with k > 1 noise draws per row, "scores" is the importance-weighted bound
        log mean_k w_k and "elbo" the plain average mean_k log w_k; both are lower bounds.
        """
        try:
            req = _validate(ScoreRequest, body)
            return JSONResponse(await _call(self._score, req, len(req.x) * req.k))
        except ApiError as err:
            return _error_response("score", err)

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
        if req.test == "mmd":
            result = mmd_test(real, fake, permutations=req.permutations, seed=req.seed)
        else:
            result = c2st(real, fake, seed=req.seed)
        return {"model": loaded.stored.tag, **result}

    @bentoml.api(route="/two_sample_test")
    async def two_sample_test(self, body: dict[str, Any], /) -> Any:
        """Two-sample test of real rows against model samples:
        {"model", "x", "test": "mmd"|"c2st", "n_model"?, "seed"?, "permutations"?}."""
        try:
            req = _validate(TwoSampleRequest, body)
            return JSONResponse(await anyio.to_thread.run_sync(self._two_sample, req))
        except ApiError as err:
            return _error_response("two_sample_test", err)

    # --- /models (POST; GET /models is the mounted route) ------------------------------------
    @bentoml.api(route="/models")
    async def models(self, body: dict[str, Any] | None = None, /) -> Any:
        """The served models: name, version, family, capabilities, score kinds, data, metrics."""
        return JSONResponse({"models": _list_models(self.cache)})


Genreg.add_asgi_middleware(ApiGate)
