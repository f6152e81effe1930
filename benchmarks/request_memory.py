"""One heavy request's time and the worker's memory, sampled from outside (issue: bounded requests).

Starts `genreg serve` (one worker) on a store, waits until it is idle, then for each case sends
one request and prints: the answer's status and time, the worker's idle resident memory before
it, its peak while the request ran (VmRSS sampled every 20 ms, and the kernel's VmHWM), and its
resident memory 10 s after the answer.

  BENTOML_HOME=/path/to/store .venv/bin/python benchmarks/request_memory.py \
      --case 'diffusion-8gaussians:score:4000:64' --case 'diffusion-digits:score:64:64'

A case is MODEL:score:ROWS:K (rows drawn from the model's own samples) or MODEL:sample:N:STEPS.
``--largest MODEL`` sends, instead, the largest body the server publishes for MODEL on each
endpoint (GET /models' limits under the server's caps; tests/servers.py's largest_bodies, the
rule tests/test_bounded.py holds the demo models to), x from the model's own samples.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers import PeakRSS, largest_bodies, running_server, status_kib  # noqa: E402


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


def _case(case: str) -> tuple[str, str, int, int]:
    model, op, a, b = case.split(":")
    return model, op, int(a), int(b)


def _largest(client: httpx.Client, model: str) -> list[tuple[str, str, dict]]:
    """(label, path, body) for the largest published body of ``model`` on each endpoint."""
    from registry.runtime.scoring import draw_weight
    from services.schemas import MAX_DRAWS, MAX_N, MAX_ROWS, MAX_TWO_SAMPLE

    info = next(m for m in client.get("/models").json()["models"] if m["name"] == model)
    # A few of its own samples, repeated into x (as many as one published /sample allows).
    n = max(1, min(256, info["sample_n"], info["sample_rows"] // draw_weight(info["steps"])))
    real = client.post("/sample", json={"model": model, "n": n, "seed": 1}).json()["samples"]
    caps = {"max_rows": MAX_ROWS, "max_draws": MAX_DRAWS, "max_n": MAX_N, "max_two_sample": MAX_TWO_SAMPLE}
    plans = []
    for path, body in largest_bodies(info, real, caps):
        rows = len(body.get("x", body.get("z", [])))
        label = f"{model} {path} rows={rows} n={body.get('n') or body.get('n_model')} k={body.get('k')} steps={body.get('steps')} {body.get('test', '')}"
        plans.append((label, path, body))
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", action="append", default=[])
    parser.add_argument(
        "--largest", action="append", default=[], help="a model: its largest published bodies"
    )
    parser.add_argument("--after", type=float, default=10.0, help="seconds to wait before the after figure")
    args = parser.parse_args()
    log_path = Path(tempfile.mkdtemp(prefix="genreg-reqmem-")) / "server.log"
    env = {"GENREG_POLL_SECONDS": "0", "GENREG_ACCESS_LOG": "0"}
    with running_server(log_path, workers=1, **env) as server:
        (worker,) = [p for p in server.workers() if status_kib(p, "VmRSS") > 100_000] or server.workers()[-1:]
        with httpx.Client(base_url=server.base, timeout=600) as client:
            plans = [(case, *body_for(client, *_case(case))) for case in args.case]
            for model in args.largest:
                plans += _largest(client, model)
            for case, path, body in plans:
                time.sleep(2.0)
                idle = status_kib(worker, "VmRSS")
                Path(f"/proc/{worker}/clear_refs").write_text("5")  # VmHWM from here
                sampler = PeakRSS(worker)
                sampler.start()
                start = time.perf_counter()
                answer = client.post(path, json=body)
                seconds = time.perf_counter() - start
                peak = sampler.stop()
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
