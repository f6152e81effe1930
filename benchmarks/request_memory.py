"""One heavy request's time and the worker's memory, sampled from outside (issue: bounded requests).

Starts `genreg serve` (one worker) on a store, waits until it is idle, then for each case sends
one request and prints: the answer's status and time, the worker's idle resident memory before
it, its peak while the request ran (VmRSS sampled every 20 ms, and the kernel's VmHWM), and its
resident memory 10 s after the answer.

  BENTOML_HOME=/path/to/store .venv/bin/python benchmarks/request_memory.py \
      --case 'diffusion-8gaussians:score:4000:64' --case 'diffusion-digits:score:64:64'

A case is MODEL:score:ROWS:K (rows drawn from the model's own samples) or MODEL:sample:N:STEPS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers import running_server, status_kib  # noqa: E402


class Sampler(threading.Thread):
    """The peak of a process's VmRSS, sampled every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            except OSError:
                return
            time.sleep(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def body_for(client: httpx.Client, model: str, op: str, a: int, b: int) -> tuple[str, dict]:
    if op == "score":
        rows: list = []
        while len(rows) < a:
            got = client.post(
                "/sample", json={"model": model, "n": min(1000, a - len(rows)), "seed": len(rows)}
            )
            got.raise_for_status()
            rows += got.json()["samples"]
        return "/score", {"model": model, "x": rows[:a], "k": b, "kind": "bound", "estimate": "average"}
    return "/sample", {"model": model, "n": a, "steps": b, "seed": 0}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", action="append", required=True)
    parser.add_argument("--after", type=float, default=10.0, help="seconds to wait before the after figure")
    args = parser.parse_args()
    log_path = Path(tempfile.mkdtemp(prefix="genreg-reqmem-")) / "server.log"
    env = {"GENREG_POLL_SECONDS": "0", "GENREG_ACCESS_LOG": "0"}
    with running_server(log_path, workers=1, **env) as server:
        (worker,) = [p for p in server.workers() if status_kib(p, "VmRSS") > 100_000] or server.workers()[-1:]
        with httpx.Client(base_url=server.base, timeout=600) as client:
            for case in args.case:
                model, op, a, b = case.split(":")
                path, body = body_for(client, model, op, int(a), int(b))
                time.sleep(2.0)
                idle = status_kib(worker, "VmRSS")
                Path(f"/proc/{worker}/clear_refs").write_text("5")  # VmHWM from here
                sampler = Sampler(worker)
                sampler.start()
                start = time.perf_counter()
                answer = client.post(path, json=body)
                seconds = time.perf_counter() - start
                peak = max(sampler.stop(), status_kib(worker, "VmHWM"))
                time.sleep(args.after)
                after = status_kib(worker, "VmRSS")
                detail = "" if answer.status_code == 200 else f" {answer.text[:160]}"
                print(
                    f"{case}: {answer.status_code} in {seconds:.1f} s; worker idle {idle / 1024:.0f} MiB, "
                    f"peak {peak / 1024:.0f} MiB (+{(peak - idle) / 1024:.0f}), "
                    f"{args.after:g} s after {after / 1024:.0f} MiB ({after / idle:.2f}x idle){detail}",
                    flush=True,
                )
    if os.environ.get("GENREG_REQMEM_LOG"):
        print(log_path.read_text())


if __name__ == "__main__":
    main()
