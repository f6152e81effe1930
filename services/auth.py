"""Optional bearer-token auth: GENREG_API_TOKEN set means every API call must carry it.

GENREG_API_TOKEN may hold several tokens, separated by commas, one per client: each is accepted,
and a task (services.tasks) is seen only with the token that submitted it.

Health probes and /metrics stay open (orchestrators and Prometheus scrape them without
credentials), and so does the gallery's static page and assets: a browser cannot attach a
header to a page navigation, and the page holds no data; its API calls send the token.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

from services.errors import ApiError, error_response

TOKEN_ENV = "GENREG_API_TOKEN"
OPEN_PATHS = frozenset(
    {"/healthz", "/livez", "/readyz", "/metrics", "/", "/ui", "/v2/health/live", "/v2/health/ready"}
)
OPEN_PREFIXES = ("/static/",)


def configured_tokens() -> tuple[bytes, ...]:
    """The tokens from the environment (comma-separated); none when auth is off (unset or blank)."""
    return tuple(t.strip().encode() for t in os.environ.get(TOKEN_ENV, "").split(",") if t.strip())


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The credentials of an ``Authorization: Bearer <token>`` header, if there is one."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def check(tokens: tuple[bytes, ...], headers: list[tuple[bytes, bytes]]) -> str | None:
    """None when the request carries one of ``tokens``; otherwise the reason, for the 401 body.

    compare_digest takes time independent of where the strings differ, so the answer's
    timing does not reveal how much of a guessed token was right; every token is compared.
    """
    given = bearer(headers)
    if given is None:
        return "missing bearer token: send 'Authorization: Bearer <token>'"
    matches = [hmac.compare_digest(given, token) for token in tokens]
    if not any(matches):
        return "invalid bearer token"
    return None


class BearerAuth:
    """ASGI middleware: with a token configured, every path but the open ones needs it (401).

    A middleware, not a route check, so that it also guards BentoML's own routes.
    ``endpoints`` maps API paths to the endpoint names that label genreg_errors_total;
    ``endpoint_of`` names the Open Inference Protocol's (services.v2.endpoint_of), whose refusals
    are counted with protocol="v2" and answered with its error body.
    """

    def __init__(
        self, app: Any, endpoints: dict[str, str], endpoint_of: Callable[[str], str | None] | None = None
    ) -> None:
        self.app = app
        self.endpoints = endpoints
        self.endpoint_of = endpoint_of or (lambda path: None)
        self.tokens = configured_tokens()

    @staticmethod
    def enabled() -> bool:
        return bool(configured_tokens())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.tokens and scope["type"] == "websocket":
            # Every scope that carries a request is checked; BentoML serves no websocket of
            # ours, but a route added later (or by BentoML) must not open a way around the token.
            if check(self.tokens, scope["headers"]) is not None:
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
                return
        if self.tokens and scope["type"] == "http":
            path = scope["path"].rstrip("/") or "/"
            problem = None if is_open(path) else check(self.tokens, scope["headers"])
            if problem is not None:
                err = ApiError(401, "authorization", problem, "unauthorized")
                v2_endpoint = self.endpoint_of(path)
                if v2_endpoint is not None:
                    err.message = f"authorization: {problem}"
                    await error_response(v2_endpoint, err, "v2")(scope, receive, send)
                    return
                await error_response(self.endpoints.get(path, "other"), err)(scope, receive, send)
                return
        await self.app(scope, receive, send)
