"""A request's memory and time, bounded by construction.

Every graph call of the serving runtime runs over chunks of rows (registry.runtime.models). A
chunk's size comes from the graph's measured cost (GraphSpec.cost, registry.runtime.cost) and the
request's memory budget, ``GENREG_REQUEST_MEMORY`` (default 512 MiB): what the request holds
whole (its rows, its answers, a sampler's state and one step's noise) plus one chunk's call
(measured per row, with its inputs and noise) stays within it, whatever the rows, k, steps or a
scorer's inner steps. A request whose held arrays alone exceed the budget is refused before any
work, naming the field.

Time is planned the same way: a call's rows at the graph's rate (its measured one, or what this
process has seen of large calls since). A request stops at the next chunk once its answer is no
longer wanted (:class:`Token`: the deadline passed, or the client went away).
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from registry.runtime.graphs import GraphCost

REQUEST_MEMORY = int(os.environ.get("GENREG_REQUEST_MEMORY", str(512 << 20)))
# A call planned above this many bytes gives its ONNX Runtime arena back when it ends: the
# arena keeps its peak otherwise (17.8 GB after one large diffusion score); below it, the arena
# is kept for speed (benchmarks/RESULTS.md, "Bounded requests").
SHRINK_BYTES = 16 << 20
# Memory a request takes besides its arrays and its graph calls' arenas: the worker thread's own
# allocator arena and ONNX Runtime's per-thread scratch buffers. Measured: a digits diffusion
# score planned at 93 MiB peaked 26 MiB higher in a fresh thread; a 2-D one, 5 MiB.
RESERVE = 32 << 20
# The published row limits leave half the deadline for a machine busier than the one measured.
DEADLINE_SHARE = 0.5
# A row of a request body, parsed: JSON text, Python floats in lists, then float64 and float32
# arrays (measured: 56 bytes a value for rows of floats such as "0.0" or "255.0", 24 for small
# integers, which Python shares).
HELD_VALUE_BYTES = 56


class Cancelled(Exception):
    """The request's answer is no longer wanted: its deadline passed or its client left."""


class Token:
    """Whether the request a computation serves still wants its answer; checked between chunks."""

    __slots__ = ("cancelled", "deadline", "done", "reason")

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline  # time.monotonic() past which the answer is not wanted
        # A plain flag: set by the event loop, read by the worker thread between chunks (one
        # attribute store is atomic under the GIL; a threading.Event per request cost 3 us).
        self.cancelled = False
        self.reason = "cancelled"
        self.done = 0  # graph rows run so far (a task's progress: services.tasks)

    def cancel(self, reason: str) -> None:
        self.reason = reason
        self.cancelled = True

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(self.reason)
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.cancel("deadline passed")
            raise Cancelled(self.reason)


# The token of the request this context serves (the service sets it; a worker thread inherits
# it with the context). None: nothing to check (the CLI, the pipeline).
TOKEN: ContextVar[Token | None] = ContextVar("genreg_request_token", default=None)


def progressed(rows: int) -> None:
    """Count ``rows`` graph rows run for the current request (its progress)."""
    token = TOKEN.get()
    if token is not None:
        token.done += rows


def checkpoint() -> None:
    """Raise Cancelled when the current request's answer is no longer wanted."""
    token = TOKEN.get()
    if token is not None:
        token.check()


class BudgetError(ValueError):
    """A request whose held arrays alone exceed the memory budget (``field`` is at fault)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Plan:
    """How a request's graph calls run: ``rows`` graph rows in all over ``calls`` calls of up to
    ``chunk`` rows; what it holds whole (``held``) and what one chunk's call takes, and its
    planned time."""

    rows: int
    calls: int
    chunk: int
    held: int
    chunk_bytes: int
    seconds: float

    @property
    def size(self) -> int:
        """What the request itself allocates at most: its held arrays and one chunk's call (its
        peak over the worker's idle size adds the RESERVE)."""
        return self.held + self.chunk_bytes


def chunk_rows(budget: int, held: int, call_bytes: int, row_bytes: int) -> int:
    """The most rows a call may take so that ``held`` + the call + RESERVE fits ``budget`` (at
    least 1)."""
    free = budget - RESERVE - held - call_bytes
    return max(1, free // max(1, row_bytes))


def fitting_rows(budget: int, held_row: int, call_bytes: int, row_bytes: int, fixed: int = 0) -> int:
    """The most rows a request may bring when each holds ``held_row`` bytes for the whole
    request (besides ``fixed``), so that what it holds, one single-row call (``call_bytes`` +
    ``row_bytes``) and the RESERVE fit ``budget``: the largest request that the plans' admission
    (LoadedModel.plan) takes, and so what the service publishes (0: none)."""
    free = budget - RESERVE - fixed - call_bytes - row_bytes
    return max(0, free // max(1, held_row))


def power_of_two_floor(n: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(1.0, n))))


def row_limit(cost: GraphCost | None, cap: int, deadline: float | None, calls: int = 1) -> int:
    """The most graph rows one request may ask of a graph measured at ``cost``: those it runs in
    ``DEADLINE_SHARE`` of the ``deadline`` at that rate (after ``calls`` calls' fixed cost), as a
    power of two (so that the published limits stay rectangles), capped at ``cap``; ``cap`` when
    there is no deadline or no measurement."""
    if cost is None or deadline is None or cost.row_seconds <= 0:
        return cap
    rows = (deadline * DEADLINE_SHARE - calls * cost.call_seconds) / cost.row_seconds
    return min(cap, power_of_two_floor(rows))


def release_memory() -> None:
    """Give the C heap's free memory back to the system (glibc's malloc_trim; nothing elsewhere).

    After a large request the allocator keeps what ONNX Runtime and numpy freed, and a worker's
    resident memory stays at its peak; trimming brings it back near idle."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = int(os.environ.get("GENREG_MMAP_THRESHOLD", str(1 << 20)))
_RETURNING = False


def return_large_frees() -> None:
    """Make glibc serve every allocation of MMAP_THRESHOLD and up with its own mapping, returned
    to the system when freed (nothing elsewhere).

    By default glibc raises that threshold after the first large free (up to 32 MiB), and the
    chunks of a long request then come from its heaps, which grow with fragmentation: a 2-D
    diffusion score of 262 chunks, planned at 95 MiB, kept 70 MiB more resident after each of
    its first chunks and peaked 100 MiB over idle; with the threshold fixed, 26 (benchmarks/
    RESULTS.md, "Bounded requests"). The cost measurement runs this way, and a serving worker
    from its first heavy request on (``GENREG_MMAP_THRESHOLD=0``: never): fixed, the threshold
    cost ordinary batch-1,024 requests 3-4% (glibc then no longer adapts its trim threshold
    either), so a worker that only ever answers light requests keeps glibc's defaults.
    Idempotent."""
    global _RETURNING
    if _RETURNING or MMAP_THRESHOLD <= 0:
        return
    _RETURNING = True
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass
