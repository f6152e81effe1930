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


def json_response(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(payload), status_code=status, media_type="application/json", headers=headers)


def error_response(endpoint: str, err: ApiError) -> Response:
    """``{"error", "field"}`` with the error's status, counted in genreg_errors_total."""
    ERRORS.labels(endpoint=endpoint, reason=err.reason).inc()
    log.info("%s %d %s: %s", endpoint, err.status, err.field or "-", err.message)
    headers = dict(err.headers)
    if err.status == 401:
        headers["www-authenticate"] = 'Bearer realm="genreg"'
    return json_response({"error": err.message, "field": err.field}, err.status, headers or None)
