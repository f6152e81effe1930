"""The API's error answers: one JSON shape, one counter, one log line (never a traceback)."""

from __future__ import annotations

import logging

from starlette.responses import Response

from services.jsonbody import dumps
from services.metrics import ERRORS

log = logging.getLogger("genreg.service")


class ApiError(Exception):
    """A request the service refuses: HTTP status, the field at fault, a message, a metric reason."""

    def __init__(
        self,
        status: int,
        field: str | None,
        message: str,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.reason = status, field, message, reason
        self.headers = headers or {}


# Between start-up and shutdown BentoML holds the service instance; outside it (a request that
# races the shutdown) its accessor raises, and the answer is 503, not a traceback.
NOT_RUNNING = ApiError(503, None, "the service is starting or stopping; retry", "unavailable")
NOT_AN_OBJECT = ApiError(400, "body", "the request body must be a JSON object", "invalid_json")


def json_response(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=headers)


def error_response(
    endpoint: str, err: ApiError, protocol: str = "genreg", headers: dict[str, str] | None = None
) -> Response:
    """The error's status and body, counted in genreg_errors_total.

    genreg's API answers ``{"error", "field"}``; the Open Inference Protocol (``protocol="v2"``)
    defines its error body as ``{"error"}`` alone, and its messages name the field instead.
    """
    ERRORS.labels(endpoint=endpoint, reason=err.reason, protocol=protocol).inc()
    log.info("%s %s %d %s: %s", protocol, endpoint, err.status, err.field or "-", err.message)
    headers = {**err.headers, **(headers or {})}
    if err.status == 401:
        headers["www-authenticate"] = 'Bearer realm="genreg"'
    body = {"error": err.message} if protocol == "v2" else {"error": err.message, "field": err.field}
    return json_response(body, err.status, headers or None)
