"""Peak memory of a worker under concurrent heavy requests, with and without admission control.

For each GENREG_MAX_HEAVY setting (0 = no limit) it starts `genreg serve` on a private store
with the Gaussian baseline on digits, sends one two-sample test at its limits (2,000 real rows
x 64 and 2,000 model rows) alone, then C of them at once and C scores at the draw-row limit
(k = 1000 draws x 256 rows: k counts as 1,024 against the draw-row limit), and prints the worker's peak resident memory (VmHWM, reset
between phases) above its idle size, with the answers' status codes.

  .venv/bin/python benchmarks/memory.py            # limits 0 and 2, 8 concurrent requests
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers import running_server  # noqa: E402

MODEL = "gaussian-digits"


def peak_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def burst(base: str, path: str, bodies: list[dict]) -> Counter:
    with httpx.Client(base_url=base, timeout=300) as client, cf.ThreadPoolExecutor(len(bodies)) as pool:
        return Counter(r.status_code for r in pool.map(lambda b: client.post(path, json=b), bodies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limits", default="0,2")
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="genreg-memory-")
    env = dict(os.environ, BENTOML_HOME=home)
    subprocess.run(
        [sys.executable, "-m", "registry.cli", "train", "gaussian", "--data", "digits", "--quiet"],
        env=env,
        check=True,
        capture_output=True,
    )
    rng = np.random.default_rng(0)
    two = [
        {"model": MODEL, "x": rng.integers(0, 17, (2000, 64)).tolist(), "n_model": 2000, "seed": i}
        for i in range(args.concurrent)
    ]
    score = [
        {"model": MODEL, "x": rng.integers(0, 17, (256, 64)).tolist(), "kind": "bound", "k": 1000, "seed": i}
        for i in range(args.concurrent)
    ]
    print(f"{'GENREG_MAX_HEAVY':>16} {'phase':>28} {'peak MiB over idle':>19}  answers")
    for limit in args.limits.split(","):
        log = Path(home) / f"server-{limit}.log"
        extra = {"BENTOML_HOME": home, "GENREG_MAX_HEAVY": limit, "GENREG_MAX_TWO_SAMPLE": "2000"}
        with running_server(log, **extra) as srv:
            (worker,) = srv.workers()
            burst(srv.base, "/two_sample_test", two[:1])  # first-call allocations
            reset(worker)
            idle = peak_kib(worker)  # the resident size now, once the peak is reset
            for phase, path, bodies in (
                ("1 two-sample test", "/two_sample_test", two[:1]),
                (f"{args.concurrent} two-sample tests", "/two_sample_test", two),
                (f"{args.concurrent} scores k=1000", "/score", score),
            ):
                reset(worker)
                answers = burst(srv.base, path, bodies)
                over = (peak_kib(worker) - idle) / 1024
                print(f"{limit:>16} {phase:>28} {over:>19.0f}  {dict(sorted(answers.items()))}", flush=True)


if __name__ == "__main__":
    main()
