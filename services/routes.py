"""The API's HTTP routes: a Starlette app that BentoML mounts on the service.

Mounting an ASGI app is BentoML's documented way to add routes. The app reaches the worker's
service instance through ``bentoml.get_current_service`` (passed in by services.service), so
nothing is wired through module globals. Each API route reads the body once (413 over the
limit), parses it once with orjson (400 unless a JSON object) and hands the dict to the
service's handler: BentoML's own API routes would parse and convert the body a second time,
which at batch 1,024 cost more than the model (benchmarks/RESULTS.md, Hardening). The app
also answers GET /models (BentoML's API routes are POST only), the gallery page and its
assets, and /docs.json (the OpenAPI document built from services.schemas).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from services import openapi
from services.errors import ApiError, error_response, json_response
from services.jsonbody import loads, may_hold_bools

# Path -> endpoint name (the label of genreg_errors_total and the handler's switch).
API_PATHS = {
    "/sample": "sample",
    "/score": "score",
    "/models": "models",
    "/two_sample_test": "two_sample_test",
}
STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


class Api(Protocol):
    """What the routes need of the service instance."""

    async def handle(self, endpoint: str, body: dict[str, Any], *, may_hold_bools: bool) -> Response: ...

    def served(self) -> list[str]: ...


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _Endpoint:
    """One API route as a bare ASGI app (no Request object: the body is all it needs)."""

    def __init__(self, endpoint: str, service: Callable[[], Api], max_body_bytes: int) -> None:
        self.endpoint = endpoint
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b"" if scope["method"] == "GET" else await self._read(scope, receive, send)
        if body is None:
            return
        if self.endpoint == "models" and not body.strip():
            body = b"{}"
        try:
            parsed = loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            err = ApiError(400, "body", "the request body must be a JSON object", "invalid_json")
            await error_response(self.endpoint, err)(scope, receive, send)
            return
        answer = await self.service().handle(self.endpoint, parsed, may_hold_bools=may_hold_bools(body))
        await answer(scope, receive, send)

    async def _read(self, scope: dict[str, Any], receive: Any, send: Any) -> bytes | None:
        """The whole body, or None after answering 413 (or when the client went away)."""
        too_large = ApiError(
            413, "body", f"the request body exceeds {self.max_body_bytes} bytes", "too_large"
        )
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await error_response(self.endpoint, too_large)(scope, receive, send)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await error_response(self.endpoint, too_large)(scope, receive, send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def static_file(name: str) -> Response:
    """A file of services/static (the gallery page and its assets); nothing else is served."""
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in files:
        return json_response({"error": f"no such file: {name}", "field": None}, 404)
    file = files[name]
    return Response(file.read_bytes(), media_type=MEDIA_TYPES.get(file.suffix, "application/octet-stream"))


class _Routes(Starlette):
    """Starlette without its own error middlewares: BentoML's app, which mounts this one, has
    them already, and a second pair costs every request two more calls (benchmarks/RESULTS.md)."""

    def build_middleware_stack(self) -> Any:
        return self.router


def build_app(service: Callable[[], Api], *, max_body_bytes: int, auth: bool) -> Starlette:
    """The routes, calling ``service()`` for the worker's service instance on each request."""

    async def page(request: Any) -> Response:
        return static_file("index.html")

    async def asset(request: Any) -> Response:
        return static_file(request.path_params["name"])

    async def docs(request: Any) -> Response:
        return json_response(openapi.build(service().served(), auth))

    routes = [
        Route(path, _Endpoint(endpoint, service, max_body_bytes), methods=["POST"])
        for path, endpoint in API_PATHS.items()
        if endpoint != "models"
    ]
    routes += [
        Route("/models", _Endpoint("models", service, max_body_bytes), methods=["GET", "POST"]),
        Route("/", page, methods=["GET"]),
        Route("/ui", page, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/docs.json", docs, methods=["GET"]),
    ]
    return _Routes(routes=routes)
