"""Admission of heavy requests: at most GENREG_MAX_HEAVY at once per worker, 429 beyond.

A two-sample test holds several (x + model rows)^2 float64 matrices (about 0.5 GB at its
limits), and a score or sample near the draw-row limit holds its noise, rows and outputs:
tens of MB. Light requests are not gated; heavy ones take a slot or are refused at once with
Retry-After (queueing them would hold their parsed bodies in memory while they wait). So a
worker's memory stays below its idle size + GENREG_MAX_HEAVY x the largest heavy request +
the light ones in flight (benchmarks/RESULTS.md, Bounded resources, has the measurements).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from services.errors import ApiError

MAX_HEAVY = int(os.environ.get("GENREG_MAX_HEAVY", "2"))
# A request whose graph calls handle more than this many float32 values (rows x width, k draws
# and sampling steps included) is heavy: 2^20 values are 4 MiB per array.
HEAVY_VALUES = int(os.environ.get("GENREG_HEAVY_VALUES", str(1 << 20)))
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
