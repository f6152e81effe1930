"""ASGI middleware in front of BentoML's router: the service's HTTP front door.

It sits inside BentoML's own middlewares (request metrics, access log, concurrency limit,
timeout), so everything it answers is still counted and logged by them. It

- checks the bearer token when GENREG_API_TOKEN is set (services.auth);
- answers the API itself: reads the body once (413 over the limit), parses it once with
  orjson (400 unless a JSON object) and hands the dict to the service's handler. BentoML's
  own route would parse and convert the body a second time, which at batch 1,024 cost more
  than the model (benchmarks/RESULTS.md);
- answers GET /models (BentoML's API routes are POST only), the gallery page and its assets,
  and /docs.json (the OpenAPI document built from our pydantic schemas).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.responses import Response

from services import auth, openapi
from services.errors import ApiError, error_response, json_response
from services.jsonbody import loads

API_PATHS = {
    "/sample": "sample",
    "/score": "score",
    "/models": "models",
    "/two_sample_test": "two_sample_test",
}
STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}

Handler = Callable[[str, dict[str, Any]], Awaitable[Response]]


class Binding:
    """What the worker's service instance exposes to the gate (set in its __init__)."""

    handle: Handler | None = None
    served: Callable[[], list[str]] = staticmethod(list)


BOUND = Binding()


def _static(path: str) -> Response:
    """The gallery page and its assets; only files that exist in services/static are served."""
    name = "index.html" if path in ("/", "/ui") else path.removeprefix("/static/")
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in files:
        return json_response({"error": f"no such file: {name}", "field": None}, 404)
    file = files[name]
    return Response(file.read_bytes(), media_type=MEDIA_TYPES.get(file.suffix, "application/octet-stream"))


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ApiGate:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.token = auth.configured_token()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        endpoint = API_PATHS.get(path)
        if self.token is not None and not auth.is_open(path):
            problem = auth.check(self.token, scope["headers"])
            if problem is not None:
                err = ApiError(401, "authorization", problem, "unauthorized")
                await error_response(endpoint or "other", err)(scope, receive, send)
                return
        if method == "GET" and (path in ("/", "/ui") or path.startswith("/static/")):
            await _static(path)(scope, receive, send)
            return
        if method == "GET" and path == "/docs.json":
            await json_response(openapi.build(BOUND.served(), self.token is not None))(scope, receive, send)
            return
        if endpoint is None or method not in ("POST", "GET") or (method == "GET" and path != "/models"):
            await self.app(scope, receive, send)
            return
        if BOUND.handle is None:  # requests before the service's __init__ finished
            await self.app(scope, receive, send)
            return
        body = b"" if method == "GET" else await self._read(scope, receive, send, endpoint)
        if body is None:
            return
        if path == "/models" and not body.strip():
            body = b"{}"
        try:
            parsed = loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            err = ApiError(400, "body", "the request body must be a JSON object", "invalid_json")
            await error_response(endpoint, err)(scope, receive, send)
            return
        await (await BOUND.handle(endpoint, parsed))(scope, receive, send)

    async def _read(self, scope: dict[str, Any], receive: Any, send: Any, endpoint: str) -> bytes | None:
        """The whole body, or None after answering 413 (or when the client went away)."""
        too_large = ApiError(
            413, "body", f"the request body exceeds {self.max_body_bytes} bytes", "too_large"
        )
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await error_response(endpoint, too_large)(scope, receive, send)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await error_response(endpoint, too_large)(scope, receive, send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
