"""The API's HTTP routes, answered in front of BentoML's app.

Each API route reads the body once (413 over the limit), parses it once with orjson (400
unless a JSON object) and hands the dict to the service's handler: BentoML's own API routes
would parse and convert the body a second time, which at batch 1,024 cost more than the model.
The routes also answer GET /models (BentoML's API routes are POST only), the task paths of
/sample, /score and /two_sample_test (services.tasks), the Open Inference Protocol
(services.v2), the gallery page and its assets, /docs.json (the OpenAPI document built from
services.schemas) and /schema.json (the description BentoML's own clients read, from the same
schemas). Every other request goes on to BentoML's app as it is.

services.service.GenregService puts these routes outside BentoML's app, so its per-request
middlewares (tracing, access log, timeout, metrics, Starlette's error middleware) do not run
for them: they took 0.4 ms of a batch-1 request's 0.85 ms. What they were there for, each
request of ours gets once from services.traffic. (Inside BentoML's middlewares, as an ASGI
middleware of the service, these routes had already beaten a Starlette app mounted on the
service by 10% at batch 1: benchmarks/RESULTS.md, Architecture.)

The routes reach the worker's service instance through the accessor they are given
(``bentoml.get_current_service``, passed by services.service): no module global, no context
variable.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from starlette.responses import Response

from services import openapi, tasks, v2
from services.auth import bearer
from services.errors import NOT_AN_OBJECT, NOT_RUNNING, ApiError, error_response, json_response
from services.jsonbody import json_object, may_hold_bools
from services.taskstore import owner_of
from services.traffic import Traffic

# Path -> endpoint name (the label of genreg_errors_total and the handler's switch).
API_PATHS = {
    "/sample": "sample",
    "/score": "score",
    "/models": "models",
    "/two_sample_test": "two_sample_test",
    "/encode": "encode",
    "/decode": "decode",
}
# The Open Inference Protocol's model repository extension: the live registry's explicit
# control (services.cache), POST only, as the protocol defines it.
REPOSITORY = re.compile(
    r"^/v2/repository/(?:(?P<index>index)|models/(?P<name>[^/]+)/(?P<action>load|unload))$"
)
# BentoML's task paths (services.tasks): /NAME/submit, status, get, cancel and retry.
TASK_PATH = re.compile(rf"^/(?P<api>{'|'.join(tasks.APIS)})/(?P<action>{'|'.join(tasks.ACTIONS)})$")
STATIC = Path(__file__).resolve().parent / "static"
JSON_LIMIT = (
    ", the limit of a JSON body, whose parse must fit one request's memory budget "
    "(GENREG_REQUEST_MEMORY / 16); split it, or send binary tensors over V2"
)
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


class Api(v2.V2Api, Protocol):
    """What the routes need of the service instance (and the V2 routes, services.v2)."""

    async def handle(
        self,
        endpoint: str,
        body: dict[str, Any],
        *,
        may_hold_bools: bool,
        params: dict[str, str] | None = None,
    ) -> Response: ...

    async def task(self, api: str, action: str, raw: bytes, task_id: str | None, owner: str) -> Response: ...

    def served(self) -> list[str]: ...

    def described(self) -> list[dict[str, Any]]: ...


def _instance(service: Callable[[], Api]) -> Api | None:
    try:
        return service()
    except Exception:
        return None


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(
    scope: dict[str, Any], receive: Any, limit: int, why: str = ""
) -> bytes | ApiError | None:
    """The whole body; ApiError 413 past ``limit`` (declared or streamed), ``why`` said after
    it; None if the client left."""
    too_large = ApiError(413, "body", f"the request body exceeds {limit} bytes{why}", "too_large")
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        return too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _Endpoint:
    """One API route as a bare ASGI app (no Request object: the body is all it needs)."""

    def __init__(
        self,
        endpoint: str,
        service: Callable[[], Api],
        max_body_bytes: int,
        params: dict[str, str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.params = params  # values taken from the path (the model name of a repository call)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = (
            b""
            if scope["method"] == "GET"
            else await read_body(scope, receive, self.max_body_bytes, JSON_LIMIT)
        )
        if body is None:
            return
        if isinstance(body, ApiError):
            await error_response(self.endpoint, body)(scope, receive, send)
            return
        if (self.endpoint == "models" or self.endpoint.startswith("repository")) and not body.strip():
            body = b"{}"
        parsed = json_object(body)
        if parsed is None:
            await error_response(self.endpoint, NOT_AN_OBJECT)(scope, receive, send)
            return
        service = _instance(self.service)
        if service is None:
            await error_response(self.endpoint, NOT_RUNNING)(scope, receive, send)
            return
        answer = await service.handle(
            self.endpoint, parsed, may_hold_bools=may_hold_bools(body), params=self.params
        )
        await answer(scope, receive, send)


def not_allowed(endpoint: str, method: str, path: str, allowed: str) -> Response:
    """405 naming the methods the path takes (and an Allow header saying so)."""
    err = ApiError(405, "method", f"{method} {path} is not allowed; use {allowed}", "method_not_allowed")
    return error_response(endpoint, err, headers={"allow": allowed})


async def _not_allowed(path: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
    allowed = "GET, POST" if path == "/models" else "POST"
    await not_allowed(API_PATHS[path], scope["method"], path, allowed)(scope, receive, send)


async def _static(name: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
    await static_file(name)(scope, receive, send)


def static_file(name: str) -> Response:
    """A file of services/static (the gallery page and its assets); nothing else is served."""
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in files:
        return json_response({"error": f"no such file: {name}", "field": None}, 404)
    file = files[name]
    return Response(file.read_bytes(), media_type=MEDIA_TYPES.get(file.suffix, "application/octet-stream"))


class ApiRoutes:
    """ASGI app in front of BentoML's: answers the API's routes; every other request goes on to
    BentoML (``app``), its own middlewares and routes.

    ``service`` returns the worker's service instance (services.service passes
    ``bentoml.get_current_service``); nothing reaches the routes through a module global. Each
    request to a route of ours passes ``traffic`` (services.traffic) once, labelled with its
    endpoint and protocol.
    """

    def __init__(
        self,
        app: Any,
        service: Callable[[], Api],
        max_body_bytes: int,
        auth: bool,
        traffic: Traffic,
        max_json_bytes: int | None = None,
        guard: Callable[[Any], Any] | None = None,
        traced: Callable[[Any], Any] | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.auth = auth
        self.traffic = traffic
        # JSON bodies are parsed whole (services.schemas.MAX_JSON_BYTES); binary tensors, in place.
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = max_json_bytes or max_body_bytes
        self.endpoints = {
            path: _Endpoint(endpoint, service, self.max_json_bytes) for path, endpoint in API_PATHS.items()
        }
        # ``guard`` wraps our handlers in the auth middleware inside ``traffic``, so a refused
        # token is counted, timed and logged like any answer (BentoML's routes, in ``app``, carry
        # their own guard). ``traced`` wraps our routes in a tracing middleware (services.service
        # passes OpenTelemetry's where BentoML's tracing exports spans); BentoML's routes keep
        # their own.
        self._guarded = guard(self._handle) if guard is not None else self._handle
        self._entry = traced(self._dispatch) if traced is not None else self._dispatch

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = self._route(scope["path"].rstrip("/") or "/", scope["method"])
        if found is None:
            await self.app(scope, receive, send)
            return
        scope["genreg.route"] = found
        await self._entry(scope, receive, send)

    async def _dispatch(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        endpoint, protocol, _ = scope["genreg.route"]
        await self.traffic(endpoint, protocol, self._guarded, scope, receive, send)

    @staticmethod
    async def _handle(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await scope["genreg.route"][2](scope, receive, send)

    def _route(self, path: str, method: str) -> tuple[str, str, Any] | None:
        """(endpoint, protocol, ASGI handler) of a route of ours, or None: BentoML's."""
        endpoint = self.endpoints.get(path)
        if endpoint is not None and (method == "POST" or (method == "GET" and path == "/models")):
            return endpoint.endpoint, "genreg", endpoint
        if endpoint is not None and method not in ("OPTIONS", "HEAD"):
            return API_PATHS[path], "genreg", functools.partial(_not_allowed, path)
        if (match := REPOSITORY.match(path)) is not None:
            name = "repository_index" if match["index"] else f"repository_{match['action']}"
            return name, "genreg", functools.partial(self._repository, name, match)
        if (found := v2.route(path)) is not None and method not in ("OPTIONS", "HEAD"):
            return found.endpoint, v2.PROTOCOL, functools.partial(self._v2, found)
        if method == "GET" and (path in ("/", "/ui") or path.startswith("/static/")):
            name = "index.html" if path in ("/", "/ui") else path.removeprefix("/static/")
            return "gallery", "genreg", functools.partial(_static, name)
        if method == "GET" and path == "/docs.json":
            return "docs", "genreg", self._document
        if method == "GET" and path == "/schema.json":
            return "schema", "genreg", self._client_schema
        if (match := TASK_PATH.match(path)) is not None and method not in ("OPTIONS", "HEAD"):
            name = f"{match['api']}_{match['action']}"
            return name, "genreg", functools.partial(self._task, match["api"], match["action"])
        return None

    async def _client_schema(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await json_response(openapi.client_schema())(scope, receive, send)

    async def _task(self, api: str, action: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A task path (services.tasks): same body limit, token and service instance as the API's."""
        label, allowed = f"{api}_{action}", tasks.ACTIONS[action]
        if scope["method"] != allowed:
            await not_allowed(label, scope["method"], scope["path"], allowed)(scope, receive, send)
            return
        raw = b""
        if allowed == "POST":
            read = await read_body(scope, receive, self.max_json_bytes, JSON_LIMIT)
            if read is None:
                return
            if isinstance(read, ApiError):
                await error_response(label, read)(scope, receive, send)
                return
            raw = read
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        task_id = (query.get("task_id") or [None])[0]
        # Who may see the task: the token it was submitted with (services.taskstore.owner_of).
        owner = owner_of(bearer(scope["headers"])) if self.auth else ""
        service = _instance(self.service)
        if service is None:
            await error_response(label, NOT_RUNNING)(scope, receive, send)
            return
        answer = await service.task(api, action, raw, task_id, owner)
        await answer(scope, receive, send)

    async def _document(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        service = _instance(self.service)
        served = service.served() if service is not None else []
        described = service.described() if service is not None else []
        await json_response(openapi.build(served, self.auth, described))(scope, receive, send)

    async def _repository(
        self, endpoint: str, match: re.Match[str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        if scope["method"] != "POST":
            await not_allowed(endpoint, scope["method"], scope["path"], "POST")(scope, receive, send)
            return
        params = None if match["index"] else {"model": match["name"]}
        await _Endpoint(endpoint, self.service, self.max_json_bytes, params)(scope, receive, send)

    async def _v2(self, found: v2.Route, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """An Open Inference Protocol route (services.v2): same body limit, same service instance."""
        method, path = scope["method"], scope["path"]
        if method != found.method:
            await v2.method_not_allowed(found, method, path)(scope, receive, send)
            return
        body = b""
        if method == "POST":
            binary = any(name == b"inference-header-content-length" for name, _ in scope["headers"])
            limit, why = (self.max_body_bytes, "") if binary else (self.max_json_bytes, JSON_LIMIT)
            read = await read_body(scope, receive, limit, why)
            if read is None:
                return
            if isinstance(read, ApiError):
                await v2.refuse(found.endpoint, read)(scope, receive, send)
                return
            body = read
        headers = dict(scope["headers"])
        answer = await v2.answer(found, headers, body, _instance(self.service))
        await answer(scope, receive, send)
