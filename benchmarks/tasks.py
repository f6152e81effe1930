"""Tasks (services.tasks): what held results cost a server, and how fast a cancel frees a place.

Starts `genreg serve` (two workers) on a store with results kept --ttl seconds, then:

1. submits --tasks tasks of a --rows-row sample of MODEL one after another (each waits for a
   place when the queue is full), waits until all are finished, and prints the server's resident
   memory (serve process and workers) before, with all results held, and after they expired;
   and the results' size on disk;
2. submits a --steps-step sample of STEP_MODEL, cancels it once it has run a few steps, and
   prints how long until its place in the queue (GENREG_TASK_QUEUE=1 here) takes a new task.

  BENTOML_HOME=/path/to/store .venv/bin/python benchmarks/tasks.py \\
      --model flow-8gaussians --step-model diffusion-digits
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers import running_server  # noqa: E402


def submit(client: httpx.Client, api: str, body: dict) -> str:
    while True:
        got = client.post(f"/{api}/submit", json=body)
        if got.status_code != 429:
            got.raise_for_status()
            return got.json()["task_id"]
        time.sleep(0.02)


def wait(client: httpx.Client, api: str, task_id: str) -> dict:
    while True:
        status = client.get(f"/{api}/status", params={"task_id": task_id}).json()
        if status["status"] not in ("pending", "in_progress"):
            return status
        time.sleep(0.05)


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def held(args: argparse.Namespace) -> None:
    log = Path(tempfile.mkdtemp(prefix="genreg-tasks-")) / "server.log"
    env = {"GENREG_TASK_TTL": str(args.ttl), "GENREG_TASK_QUEUE": "8", "GENREG_ACCESS_LOG": "0"}
    with (
        running_server(log, workers=2, **env) as server,
        httpx.Client(base_url=server.base, timeout=120) as client,
    ):
        time.sleep(2)
        idle = server.rss_kib()
        start = time.monotonic()
        ids = [
            submit(client, "sample", {"model": args.model, "n": args.rows, "seed": i})
            for i in range(args.tasks)
        ]
        for task_id in ids:
            assert wait(client, "sample", task_id)["status"] == "completed"
        took = time.monotonic() - start
        holding = server.rss_kib()
        size = sum(len(client.get("/sample/get", params={"task_id": t}).content) for t in ids)
        print(
            f"{args.tasks} tasks of {args.rows}-row samples of {args.model}: {took:.1f} s, results {size / 2**20:.1f} MiB on disk"
        )
        time.sleep(args.ttl + 2)
        gone = sum(client.get("/sample/status", params={"task_id": t}).status_code == 404 for t in ids)
        after = server.rss_kib()
        print(
            f"server resident memory: idle {mib(idle)}, all {args.tasks} results held {mib(holding)}, "
            f"after they expired {mib(after)} ({gone} of {args.tasks} ids now 404)"
        )


def cancel(args: argparse.Namespace) -> None:
    log = Path(tempfile.mkdtemp(prefix="genreg-tasks-")) / "server.log"
    with (
        running_server(log, workers=2, GENREG_TASK_QUEUE="1", GENREG_ACCESS_LOG="0") as server,
        httpx.Client(base_url=server.base, timeout=120) as client,
    ):
        body = {"model": args.step_model, "n": 64, "steps": args.steps, "seed": 0}
        for _ in range(args.repeats):
            task_id = submit(client, "sample", body)
            while progress(client, task_id) < 5:
                time.sleep(0.01)
            client.put("/sample/cancel", params={"task_id": task_id})
            canceled = time.monotonic()
            while (again := client.post("/sample/submit", json={**body, "steps": 1})).status_code == 429:
                time.sleep(0.005)
            freed = time.monotonic() - canceled
            wait(client, "sample", again.json()["task_id"])
            done = client.get("/sample/status", params={"task_id": task_id}).json()["progress"]["done"]
            step = wait_step(client, body)
            print(
                f"canceled at step {done} of {args.steps}: its place was free {freed * 1000:.0f} ms later "
                f"(one step of n=64: {step * 1000:.1f} ms)"
            )


def progress(client: httpx.Client, task_id: str) -> int:
    return client.get("/sample/status", params={"task_id": task_id}).json()["progress"]["done"]


def wait_step(client: httpx.Client, body: dict) -> float:
    start = time.perf_counter()
    client.post("/sample", json={**body, "steps": 100}).raise_for_status()
    return (time.perf_counter() - start) / 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="flow-8gaussians")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--ttl", type=float, default=30)
    parser.add_argument("--step-model", default="diffusion-digits")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    held(args)
    cancel(args)


if __name__ == "__main__":
    main()
