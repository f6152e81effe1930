"""What one call of a graph costs: peak resident memory and time, per call and per row, measured.

The serving runtime cuts every graph call into chunks of rows sized from these figures
(registry.runtime.budget), so a request's memory is bounded by construction. They are measured
where nothing else can disturb them: in a child process of its own, which opens the graph with
the serving runtime's session options (:func:`registry.runtime.sessions.open_session`, one
intra-op thread as the service runs it), runs it at batches growing fourfold until a call's
memory has grown by ``GROWTH`` or its time by ``SLOW``, and reads its peak resident memory
(``ru_maxrss``) after each. Per-row memory is the slope between the two largest batches; the
fixed part is what is left of the largest.

The pipeline measures every graph when it stores a model (the ``cost`` stage; GraphSpec.cost),
and the service measures a version stored without the figures when it loads it.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from registry.runtime.graphs import (
    PARITY_GUIDANCE,
    GraphCost,
    GraphSpec,
    by_file,
    condition_feeds,
    draw_noise,
)

GROWTH = 48 << 20  # bytes: enough above the allocator's noise (a few MiB) for a clean slope
SLOW = 0.5  # seconds for one call: the measurement stops growing the batch there
MAX_ROWS = 1 << 16
TIMEOUT = 300.0


class CostError(RuntimeError):
    """The graph's cost could not be measured (the message says why)."""


def probe_feeds(session: Any, spec: GraphSpec, rows: int) -> dict[str, np.ndarray]:
    """Valid inputs of ``rows`` rows for any graph: the noise its spec names (drawn as the runtime
    draws it), a loop's state, step 0 and its default count, and zeros for the data inputs."""
    feeds = draw_noise(spec.noise, rows, np.random.default_rng(0))
    # A guided sampler runs both of its predictions whatever the scale; label 0 is always valid.
    feeds.update(condition_feeds(spec, np.zeros(rows, dtype=np.int64), PARITY_GUIDANCE))
    loop = spec.loop
    for arg in session.get_inputs():
        if arg.name in feeds:
            continue
        width = arg.shape[1] if len(arg.shape) > 1 and isinstance(arg.shape[1], int) else 1
        if arg.type == "tensor(int64)":
            value = loop.steps if loop is not None and arg.name == loop.count_input else 0
            feeds[arg.name] = np.full((rows, width), value, dtype=np.int64)
        elif loop is not None and arg.name == loop.state_input:
            feeds[arg.name] = np.full((rows, width), loop.init, dtype=np.float32)
        else:
            feeds[arg.name] = np.zeros((rows, width), dtype=np.float32)
    return feeds


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _peak_bytes() -> int:
    """The process's peak resident memory since the last :func:`_reset_peak` (VmHWM on Linux),
    else since it started (ru_maxrss)."""
    try:
        line = next(x for x in _STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> None:
    """Reset the peak to the current resident memory (Linux; elsewhere measure_all runs one child
    per graph, whose ru_maxrss starts afresh)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def measure_here(path: Path, spec: GraphSpec, threads: int = 1) -> GraphCost:
    """The measurement itself; run it in a process of its own (:func:`measure`), since it reads
    the process's peak resident memory."""
    from registry.runtime.sessions import open_session

    session = open_session(path, ["CPUExecutionProvider"], threads)
    output = [spec.output]

    def call(rows: int) -> float:
        feeds = probe_feeds(session, spec, rows)
        start = time.perf_counter()
        session.run(output, feeds)
        return time.perf_counter() - start

    fixed = min(call(1) for _ in range(3))  # also the first run's one-off allocations
    _reset_peak()
    base = _peak_bytes()
    points: list[tuple[int, int, float]] = [(1, 0, fixed)]
    rows = 4
    while True:
        seconds = call(rows)
        points.append((rows, _peak_bytes() - base, seconds))
        if points[-1][1] >= GROWTH or seconds >= SLOW or rows >= MAX_ROWS:
            break
        rows *= 4
    (r1, m1, t1), (r2, m2, t2) = points[-2], points[-1]
    row_bytes = max(0, round((m2 - m1) / (r2 - r1)))
    return GraphCost(
        row_bytes=row_bytes,
        call_bytes=max(0, m2 - row_bytes * r2),
        row_seconds=max(0.0, (t2 - t1) / (r2 - r1)),
        call_seconds=fixed,
        rows=r2,
    )


def _child(pairs: list[tuple[Path, GraphSpec]], threads: int) -> list[GraphCost]:
    cmd = [sys.executable, "-m", "registry.runtime.cost", str(threads)]
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    request = json.dumps([[str(path), spec.model_dump(mode="json")] for path, spec in pairs])
    names = ", ".join(path.name for path, _ in pairs)
    try:
        done = subprocess.run(
            cmd, input=request, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise CostError(f"{names}: measuring the cost took over {TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise CostError(f"{names}: measuring the cost failed: {done.stderr.strip()[-500:]}")
    return [GraphCost.model_validate(c) for c in json.loads(done.stdout.strip().splitlines()[-1])]


def measure_all(pairs: list[tuple[Path, GraphSpec]], threads: int = 1) -> list[GraphCost]:
    """Each (graph file, spec) measured, in one child process where its peak memory can be reset
    between graphs (Linux), else in one child each (CostError if one fails)."""
    if not pairs:
        return []
    if _CLEAR_REFS.exists():
        return _child(pairs, threads)
    return [cost for pair in pairs for cost in _child([pair], threads)]


def measure(path: Path, spec: GraphSpec, threads: int = 1) -> GraphCost:
    """``spec``'s graph at ``path`` measured in a child process (CostError if that fails)."""
    return measure_all([(path, spec)], threads)[0]


def measured(directory: Path, graphs: list[GraphSpec] | tuple[GraphSpec, ...]) -> list[GraphSpec]:
    """``graphs`` (files in ``directory``) with their cost measured where it is missing."""
    todo = [g for g in by_file(graphs).values() if g.cost is None]
    found = dict(
        zip((g.file for g in todo), measure_all([(directory / g.file, g) for g in todo]), strict=True)
    )
    return [g if g.cost is not None else g.model_copy(update={"cost": found[g.file]}) for g in graphs]


if __name__ == "__main__":
    # stdin: [[graph path, spec], ...]; stdout: one JSON list of costs, in order.
    from registry.runtime.budget import return_large_frees

    return_large_frees()  # as the service runs
    results = []
    for graph, described in json.load(sys.stdin):
        results.append(measure_here(Path(graph), GraphSpec.model_validate(described), int(sys.argv[1])))
        gc.collect()
    print(json.dumps([c.model_dump() for c in results]))
