"""Adaptive batching of ONNX Runtime calls: concurrent requests on one graph share a run.

No timer: while one run is in flight, arriving requests queue; the next run takes all of
them (up to ``max_rows``). At low load a request runs alone at once, so batching adds no
latency; under load it amortises the per-call overhead. Noise is drawn per request before
batching, so a seed still fixes a request's result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

Feeds = dict[str, np.ndarray]


class _Slot:
    __slots__ = ("done", "error", "feeds", "lead", "result", "rows")

    def __init__(self, feeds: Feeds) -> None:
        self.feeds = feeds
        self.rows = len(next(iter(feeds.values())))
        self.done = threading.Event()
        self.lead = False
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class Batcher:
    """Leader/follower batching for a synchronous ``run(feeds) -> rows`` called from threads."""

    def __init__(self, run: Callable[[Feeds], np.ndarray], max_rows: int = 4096) -> None:
        self._run = run
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._busy = False
        self.runs = 0
        self.rows = 0

    def __call__(self, feeds: Feeds) -> np.ndarray:
        slot = _Slot(feeds)
        with self._lock:
            self._queue.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.done.wait()
            if not slot.lead:
                return self._result(slot)
        self._lead()
        return self._result(slot)

    @staticmethod
    def _result(slot: _Slot) -> np.ndarray:
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _take(self) -> list[_Slot]:
        batch, rows = [], 0
        while self._queue and (not batch or rows + self._queue[0].rows <= self.max_rows):
            slot = self._queue.pop(0)
            batch.append(slot)
            rows += slot.rows
        return batch

    def _lead(self) -> None:
        with self._lock:
            batch = self._take()
        try:
            if len(batch) == 1:
                outputs = [self._run(batch[0].feeds)]
            else:
                joined = {k: np.concatenate([s.feeds[k] for s in batch]) for k in batch[0].feeds}
                out = self._run(joined)
                outputs = np.split(out, np.cumsum([s.rows for s in batch])[:-1])
            for slot, result in zip(batch, outputs, strict=True):
                slot.result = result
        except BaseException as exc:  # every waiter gets the error, none hangs
            for slot in batch:
                slot.error = exc
        self.runs += 1
        self.rows += sum(s.rows for s in batch)
        with self._lock:
            # Hand the lead to the oldest waiter, or go idle.
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].done.set()
            else:
                self._busy = False
        for slot in batch:
            slot.done.set()
