"""What each of genreg's requests goes through, once, in front of its handler.

genreg's routes (services.routes) are answered ahead of BentoML's per-request middlewares
(services.service.GenregService): those cost more than an ONNX Runtime call at batch 1 (a
tracing span, an access-log wrapper, a timer task, a metrics wrapper, Starlette's error
middleware: 0.4 ms of the 0.85 ms a batch-1 request took; benchmarks/RESULTS.md, "genreg's
routes in front of BentoML's middlewares"). This layer keeps what they were there for, at the
cost of a few dictionary lookups:

- a cap on requests in flight per worker (429 beyond, health probes exempt) and a deadline for
  the answer to start (504): BentoML's ``traffic`` ``max_concurrency`` and ``timeout`` for the
  service, which services.service hands to :meth:`Traffic.configure`;
- the token check (services.auth), run inside this layer, so a refusal is counted and logged;
- ``genreg_requests_total`` and ``genreg_request_duration_seconds`` by endpoint, protocol and
  status, and ``genreg_requests_in_progress`` (BentoML's request metrics keep counting the
  routes it answers itself: health, readiness, /metrics);
- one access-log line per request on the ``genreg.access`` logger (GENREG_ACCESS_LOG=0: none);
- a 500 with the protocol's error body, and the traceback in the log, for a bug in a handler
  (never a dropped connection).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextvars import ContextVar
from typing import Any

from registry.runtime.budget import TOKEN, Token
from services.errors import ApiError, error_response
from services.metrics import IN_PROGRESS, REQUEST_SECONDS, REQUESTS

access_log = logging.getLogger("genreg.access")
log = logging.getLogger("genreg.service")

# The service's traffic defaults (its decorator gives them to BentoML too); a BentoML
# configuration that overrides them reaches both through Traffic.configure.
MAX_CONCURRENCY = 256
TIMEOUT_SECONDS = 60.0
ACCESS_LOG = os.environ.get("GENREG_ACCESS_LOG", "1").strip().lower() not in ("0", "false", "no", "off")
# Health probes are counted but neither capped nor logged, as BentoML treats its own /livez and
# /readyz: a busy worker must still say it is alive, and probes every few seconds would fill
# the access log.
PROBES = frozenset({"server_live", "server_ready"})


# How long a task's work may take (services.tasks): the deadline its planned time and its row
# limits are judged by, where a synchronous request's is the traffic timeout.
TASK_SECONDS = float(os.environ.get("GENREG_TASK_SECONDS", "1800"))
# Set while a task runs, or while its submission is checked (services.tasks).
IN_TASK: ContextVar[bool] = ContextVar("genreg_in_task", default=False)

INTERNAL = ApiError(500, None, "internal error (logged by the server)", "internal")


class Traffic:
    """The per-request layer for one worker: its requests in flight, and their accounting."""

    def __init__(
        self,
        max_concurrency: int | None = MAX_CONCURRENCY,
        timeout: float | None = TIMEOUT_SECONDS,
        access: bool = ACCESS_LOG,
        quiet_seconds: float = 0.1,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.access = access
        self.quiet_seconds = quiet_seconds
        self.in_flight = 0
        self.overlapped_at = -float("inf")  # when two requests were last in flight at once

    def alone(self) -> bool:
        """Whether the request asking is the only one this worker is handling, and no two were in
        flight together for ``quiet_seconds``. The moment alone is not enough: two closed-loop
        clients are seldom in flight at the same instant, and running one's call on the event
        loop then keeps the other's off the second core (1,024-row requests, 2 clients: 5% fewer
        rows/s). 0.1 s spans a dozen such requests; a one-second window kept a single client
        that followed concurrent ones off the loop for a second."""
        return self.in_flight <= 1 and time.perf_counter() - self.overlapped_at > self.quiet_seconds

    async def __call__(
        self, endpoint: str, protocol: str, handler: Any, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        start = time.perf_counter()
        status = 0

        async def send_counted(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if (
            self.max_concurrency is not None
            and self.in_flight >= self.max_concurrency
            and endpoint not in PROBES
        ):
            busy = ApiError(
                429, None, f"{self.max_concurrency} requests are in flight; retry", "too_many_requests"
            )
            await error_response(endpoint, busy, protocol)(scope, receive, send_counted)
        else:
            await self._handle(endpoint, protocol, handler, scope, receive, send_counted, lambda: status)
        elapsed = time.perf_counter() - start
        REQUESTS.labels(endpoint=endpoint, protocol=protocol, code=str(status)).inc()
        REQUEST_SECONDS.labels(endpoint=endpoint, protocol=protocol).observe(elapsed)
        if self.access and endpoint not in PROBES:
            client = scope.get("client")
            access_log.info(
                "%s %s %s %d %.3fms",
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
            )

    def configure(self, max_concurrency: int | None, timeout: float | None) -> None:
        """Take the limits BentoML's configuration gives the service (``traffic``: None is none)."""
        self.max_concurrency, self.timeout = max_concurrency, timeout

    async def _handle(
        self,
        endpoint: str,
        protocol: str,
        handler: Any,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        started: Any,
    ) -> None:
        self.in_flight += 1
        if self.in_flight > 1:
            self.overlapped_at = time.perf_counter()
        deadline = asyncio.timeout(self.timeout)
        # The computation behind this request checks it between chunks (registry.runtime.budget):
        # past the deadline, after a disconnect (services.routes), or once this request is over
        # (a 504's computation, which would otherwise run on), it stops and frees its memory.
        token = Token(time.monotonic() + self.timeout if self.timeout is not None else None)
        reset = TOKEN.set(token)
        reset_receive = RECEIVE.set(receive)
        try:
            with IN_PROGRESS.labels(endpoint=endpoint, protocol=protocol).track_inprogress():
                async with deadline:

                    async def send_started(message: dict[str, Any]) -> None:
                        # The deadline is for the answer to start, as BentoML's was: a large
                        # answer to a slow reader is never cut off half-sent.
                        if message["type"] == "http.response.start":
                            deadline.reschedule(None)
                        await send(message)

                    await handler(scope, receive, send_started)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                if not started():
                    late = ApiError(
                        504, None, f"the answer did not start within {self.timeout:g} seconds", "timeout"
                    )
                    await error_response(endpoint, late, protocol)(scope, receive, send)
            else:  # a bug, a TimeoutError of the handler's own included: never a dropped connection
                log.exception("%s %s: unexpected error", protocol, endpoint)
                if not started():
                    await error_response(endpoint, INTERNAL, protocol)(scope, receive, send)
        finally:
            token.cancel("the request is over")
            TOKEN.reset(reset)
            RECEIVE.reset(reset_receive)
            self.in_flight -= 1


# The request's ASGI receive, for watching() (set per request by Traffic).
RECEIVE: ContextVar[Any] = ContextVar("genreg_receive", default=None)


async def until_disconnect(receive: Any, token: Token) -> None:
    """Wait for the client to go away, then cancel the request's computation."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            token.cancel("the client disconnected")
            return


class watching:
    """``async with watching():`` cancels the current request's computation if its client goes
    away during the block. Only for a block entered after the body was read (the next message
    is then the disconnect): the service's calls that run in a worker thread. A call on the event
    loop is short, and a task per request would cost a batch-1 request more than it saves."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        token, receive = TOKEN.get(), RECEIVE.get()
        if token is not None and receive is not None:
            self.task = asyncio.create_task(until_disconnect(receive, token))

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
