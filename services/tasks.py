"""Long work as tasks, on BentoML's task paths, for /sample, /score and /two_sample_test.

For an API ``NAME``:

- ``POST /NAME/submit`` takes the synchronous call's body and answers ``{"task_id", "status"}``,
  or the synchronous call's 4xx for a body it would refuse (every check is made at submission);
- ``GET /NAME/status?task_id=`` answers BentoML's status (task_id, status, created_at,
  executed_at) with the time it finished, its progress (steps of a step sampler, draws of a
  k-draw score, rows of another) and, for a failure, the reason;
- ``GET /NAME/get?task_id=`` answers the synchronous call's answer, byte for byte (its error,
  with its status code, for a failed task; 409 while it is unfinished or if it was canceled);
- ``PUT /NAME/cancel?task_id=`` cancels it: its worker stops it at the next step;
- ``POST /NAME/retry?task_id=`` submits the same body again as a new task.

BentoML's own clients drive these (``bentoml.SyncHTTPClient(url).sample.submit(...)``).
BentoML's ``@bentoml.task`` machinery is not used: its local server cannot cancel (400, "not
supported in local development server"), keeps results forever, bounds no queue, reports no
progress, and gives any caller who has an id the result; and genreg's routes are answered in
front of BentoML's app (services.routes), where its task routes would not see them.

A task's work is judged by GENREG_TASK_SECONDS instead of the synchronous deadline (its row
limits and planned time; GET /models: task_sample_rows, task_score_rows), waits for a
heavy-request slot instead of a 429, and runs in the worker that took it, GENREG_TASK_RUNNERS at
a time; the store (services.taskstore) bounds the queue and what is kept, and lets every worker
answer for every task.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.responses import Response, StreamingResponse

from registry.runtime.budget import TOKEN, Token
from services.errors import NOT_AN_OBJECT, ApiError, error_response, json_response
from services.jsonbody import json_object, loads, may_hold_bools
from services.metrics import TASK_QUEUE_SECONDS, TASKS, TASKS_FINISHED
from services.taskstore import (
    CANCELED,
    COMPLETED,
    FAILED,
    UNFINISHED,
    QueueFull,
    TaskRow,
    TaskStore,
)
from services.traffic import IN_TASK, INTERNAL, TASK_SECONDS

log = logging.getLogger("genreg.service")

APIS = ("sample", "score", "two_sample_test")
ACTIONS = {"submit": "POST", "status": "GET", "get": "GET", "cancel": "PUT", "retry": "POST"}
RUNNERS = int(os.environ.get("GENREG_TASK_RUNNERS", "1"))
# How often a running task's worker looks for a cancellation from another worker (a read of the
# store), and how often it records its progress (a write). A cancellation that reaches the
# task's own worker stops it at once.
WATCH_SECONDS = 0.02
PROGRESS_SECONDS = 0.2
RETRY_AFTER_SECONDS = 5
CANCELED_REASON = "the task was canceled"


@dataclass(frozen=True)
class Work:
    """What a request that passed every check will run (services.service.Genreg.check): its model
    version, and the count its progress is reported in (``total`` ``unit``, each ``per`` graph
    rows)."""

    tag: str
    total: int
    unit: str
    per: int = 1


class Service(Protocol):
    """What tasks need of the service instance (services.service.Genreg)."""

    def check(self, endpoint: str, body: dict[str, Any], may_hold_bools: bool = True) -> Work: ...

    async def handle(
        self,
        endpoint: str,
        body: dict[str, Any],
        *,
        may_hold_bools: bool = True,
        params: dict[str, str] | None = None,
    ) -> Response: ...


def _unknown(task_id: str) -> ApiError:
    # Unknown, expired, another API's or another client's: one answer, so an id reveals nothing.
    return ApiError(
        404, "task_id", f"task_id: no task {task_id!r} here (unknown, or expired)", "unknown_task"
    )


class Tasks:
    """One worker's side of the tasks: its runners, and the answers to the task paths."""

    def __init__(self, store: TaskStore | None = None) -> None:
        self._store = store
        self._queue: asyncio.Queue[tuple[Service, str, str, str, bool, float]] | None = None
        self._runners: list[asyncio.Task[None]] = []
        self._running: dict[str, Token] = {}  # this worker's running tasks

    @property
    def store(self) -> TaskStore:
        if self._store is None:
            self._store = TaskStore()
        return self._store

    async def answer(
        self,
        service: Service,
        api: str,
        action: str,
        raw: bytes,
        task_id: str | None,
        owner: str,
    ) -> Response:
        """The answer to one task path; ``raw``: the body (submit), ``task_id``: the query's."""
        label = f"{api}_{action}"
        try:
            if action == "submit":
                return await self._submit(service, api, raw, owner)
            if not task_id:
                raise ApiError(
                    400, "task_id", "task_id: the query parameter task_id is required", "invalid_task_id"
                )
            row = await anyio.to_thread.run_sync(self.store.get, task_id, owner)
            if row is None or row.endpoint != api:
                raise _unknown(task_id)
            if action == "status":
                return json_response(row.as_dict())
            if action == "cancel":
                row = await anyio.to_thread.run_sync(self.store.cancel, task_id, owner) or row
                if row.status == CANCELED and task_id in self._running:
                    self._running[task_id].cancel(CANCELED_REASON)  # its own worker: at once
                return json_response(row.as_dict())
            if action == "retry":
                if row.status in UNFINISHED:
                    raise ApiError(
                        409, "task_id", f"task_id: task {task_id} is {row.status}, not finished", "unfinished"
                    )
                try:
                    body = await anyio.to_thread.run_sync(self.store.body, task_id)
                except FileNotFoundError:  # expired meanwhile
                    raise _unknown(task_id) from None
                return await self._submit(service, api, body, owner)
            return await self._result(row)
        except ApiError as err:
            return error_response(label, err)

    async def _submit(self, service: Service, api: str, raw: bytes, owner: str) -> Response:
        parsed = json_object(raw)
        if parsed is None:
            raise NOT_AN_OBJECT
        bools = may_hold_bools(raw)
        reset = IN_TASK.set(True)
        try:
            work = await anyio.to_thread.run_sync(service.check, api, parsed, bools)
        finally:
            IN_TASK.reset(reset)
        try:
            # Shielded: a task stored but never queued (the request's deadline striking between
            # the two) would stay pending, holding its place, for ever.
            with anyio.CancelScope(shield=True):
                task_id = await anyio.to_thread.run_sync(
                    self.store.submit, api, owner, raw, work.total, work.unit, work.per
                )
                self._start_runners()
                assert self._queue is not None
                TASKS.labels(endpoint=api, state="queued").inc()
                self._queue.put_nowait((service, task_id, api, work.tag, bools, time.monotonic()))
        except QueueFull as exc:
            raise ApiError(
                429,
                None,
                f"{exc}; retry after {RETRY_AFTER_SECONDS}s",
                "task_queue_full",
                headers={"retry-after": str(RETRY_AFTER_SECONDS)},
            ) from None
        return json_response({"task_id": task_id, "status": "pending"})

    async def _result(self, row: TaskRow) -> Response:
        if row.status not in (COMPLETED, FAILED):
            why = "was canceled" if row.status == CANCELED else f"is {row.status}: not finished yet"
            # 409: the request is sound, the task's state is not yet (or no longer) one that has
            # an answer; a client asks again after polling status.
            raise ApiError(409, "task_id", f"task_id: task {row.id} {why}", "unfinished")
        try:
            file = open(self.store.result_file(row.id), "rb")
        except FileNotFoundError:
            if row.status == FAILED:  # without an answer of its own (its worker died): the reason
                return json_response({"error": row.error, "field": None}, row.code or 503)
            raise _unknown(row.id) from None

        def chunks() -> Iterator[bytes]:
            # Streamed from the open file: a large result never sits whole in the worker's memory,
            # and its expiry meanwhile cannot cut it short.
            with file:
                while block := file.read(1 << 20):
                    yield block

        return StreamingResponse(chunks(), status_code=row.code, media_type="application/json")

    # --- running -------------------------------------------------------------------------------
    def _start_runners(self) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        while len(self._runners) < RUNNERS:
            # In a context of their own: one inherited from the submitting request would carry
            # that request's token and its client's connection, whose end would stop the task.
            runner = asyncio.get_running_loop().create_task(self._runner(), context=contextvars.Context())
            self._runners.append(runner)

    async def _runner(self) -> None:
        assert self._queue is not None
        while True:
            service, task_id, api, tag, may_hold_bools, queued = await self._queue.get()
            TASKS.labels(endpoint=api, state="queued").dec()
            try:
                await self._run(service, task_id, api, tag, may_hold_bools, queued)
            except Exception as exc:  # a runner never dies: the task fails, with the reason, instead
                log.exception("task %s (%s) failed", task_id, api)
                try:
                    await anyio.to_thread.run_sync(self.store.fail, task_id, f"the task could not run: {exc}")
                except Exception:  # the store itself failing: the log says so
                    log.exception("task %s: could not record its failure", task_id)

    async def _run(
        self, service: Service, task_id: str, api: str, tag: str, may_hold_bools: bool, queued: float
    ) -> None:
        store = self.store
        if not await anyio.to_thread.run_sync(store.start, task_id):
            await anyio.to_thread.run_sync(store.release, task_id)
            TASKS_FINISHED.labels(endpoint=api, outcome=CANCELED).inc()
            return
        TASK_QUEUE_SECONDS.labels(endpoint=api).observe(time.monotonic() - queued)
        body = loads(await anyio.to_thread.run_sync(store.body, task_id))
        body["model"] = tag  # the version checked at submission, whatever is newer by now
        token = Token(time.monotonic() + TASK_SECONDS)
        reset_token, reset_task = TOKEN.set(token), IN_TASK.set(True)
        watcher = asyncio.get_running_loop().create_task(self._watch(task_id, token))
        self._running[task_id] = token
        TASKS.labels(endpoint=api, state="running").inc()
        try:
            answer = await service.handle(api, body, may_hold_bools=may_hold_bools)
        except Exception:
            log.exception("task %s (%s): unexpected error", task_id, api)
            answer = error_response(api, INTERNAL)
        finally:
            watcher.cancel()
            self._running.pop(task_id, None)
            TOKEN.reset(reset_token)
            IN_TASK.reset(reset_task)
            TASKS.labels(endpoint=api, state="running").dec()
        if token.cancelled and token.reason == CANCELED_REASON:
            await anyio.to_thread.run_sync(store.release, task_id)
            TASKS_FINISHED.labels(endpoint=api, outcome=CANCELED).inc()
            return
        result = bytes(answer.body)
        error = None
        if answer.status_code >= 400:
            try:
                error = str(loads(result).get("error"))
            except (ValueError, AttributeError):
                error = result[:200].decode(errors="replace")
        await anyio.to_thread.run_sync(store.finish, task_id, answer.status_code, result, error, token.done)
        TASKS_FINISHED.labels(endpoint=api, outcome=COMPLETED if error is None else FAILED).inc()

    async def _watch(self, task_id: str, token: Token) -> None:
        """Record the running task's progress; stop it once it is canceled (from any worker)."""
        recorded = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if time.monotonic() - recorded >= PROGRESS_SECONDS:
                recorded = time.monotonic()
                wanted = await anyio.to_thread.run_sync(self.store.progress, task_id, token.done)
            else:
                wanted = await anyio.to_thread.run_sync(self.store.wanted, task_id)
            if not wanted:
                token.cancel(CANCELED_REASON)
                return
