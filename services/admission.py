"""Admission of heavy requests: at most GENREG_MAX_HEAVY at once per worker, 429 beyond.

Every request's memory is planned (registry.runtime.budget): its graph calls run over chunks
sized so that it stays within GENREG_REQUEST_MEMORY, and a two-sample test's matrices are
counted against the same budget. Light requests (planned under GENREG_HEAVY_BYTES) are not
gated; heavy ones take a slot or are refused at once with Retry-After (queueing them would hold
their parsed bodies in memory while they wait). So a worker's memory stays below its idle size
+ GENREG_MAX_HEAVY x GENREG_REQUEST_MEMORY + the light ones in flight (benchmarks/RESULTS.md,
"Bounded requests", has the measurements).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from registry.runtime.budget import checkpoint
from services.errors import ApiError

MAX_HEAVY = int(os.environ.get("GENREG_MAX_HEAVY", "2"))
# A request whose planned allocations (registry.runtime.budget.Plan.size: what it holds, and its
# largest chunk's graph call as measured) are over this many bytes is heavy. A 1,024-row score of
# a digits flow or VAE plans 9-21 MiB, a 64 x 64 digits diffusion score the whole budget.
HEAVY_BYTES = int(os.environ.get("GENREG_HEAVY_BYTES", str(64 << 20)))
RETRY_AFTER_SECONDS = 1


class HeavyGate:
    """A non-blocking counting gate for heavy requests; ``slots`` = 0 means no limit."""

    def __init__(self, slots: int = MAX_HEAVY) -> None:
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots) if slots > 0 else None

    @contextmanager
    def admit(self, field: str, what: str) -> Iterator[None]:
        """Hold a slot for the block, or raise a 429 naming the field that made the request heavy."""
        if self._free is None:
            yield
            return
        if not self._free.acquire(blocking=False):
            raise ApiError(
                429,
                field,
                f"{field}: {what} is a heavy request and {self.slots} are already running; "
                f"retry after {RETRY_AFTER_SECONDS}s or make it smaller",
                "busy",
                headers={"retry-after": str(RETRY_AFTER_SECONDS)},
            )
        try:
            yield
        finally:
            self._free.release()

    @asynccontextmanager
    async def waiting(self, poll: float = 0.05) -> AsyncIterator[None]:
        """Hold a slot for the block, waiting for one (a task's way in: it has nobody to answer
        a 429 to; the wait is at most a running request's time, polled off the event loop's back)."""
        if self._free is None:
            yield
            return
        while not self._free.acquire(blocking=False):
            checkpoint()  # a task canceled (or past its time) while it waits stops waiting
            await asyncio.sleep(poll)
        try:
            yield
        finally:
            self._free.release()
