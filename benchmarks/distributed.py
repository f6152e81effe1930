"""Data-parallel training, 1 vs N processes: seconds per epoch and the final validation bound.

For each process count it trains FAMILY on DATA for a fixed number of epochs (same seed and
global batch), N > 1 under torchrun exactly as `genreg train --nproc N` runs it (gloo on CPU,
NCCL one process per GPU), and prints one row per count. Nothing is exported or stored, so it
runs where only torch and the project's training code are installed (e.g. a GPU machine).

  .venv/bin/python benchmarks/distributed.py                        # flow on digits, 1 and 2 CPU processes
  python3 benchmarks/distributed.py --nprocs 1,2,4 --device cuda    # on a machine with 4 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(args: argparse.Namespace) -> None:
    import torch

    from registry.contract.family import TrainControl
    from registry.contract.loading import get_plugins
    from registry.datasets import load_dataset
    from registry.pipeline import distributed

    distributed.join_group(args.device)
    if distributed.world_size() == 1 and args.threads:
        torch.set_num_threads(args.threads)
    fam = get_plugins().get(args.family)
    data = load_dataset(args.data)
    start = time.monotonic()
    model = fam.train(
        data, fam.Config(), TrainControl(seed=0, epochs=args.epochs, device=args.device, progress=False)
    )
    seconds = time.monotonic() - start
    if distributed.is_main_process():
        fit = model.fit
        Path(args.out).write_text(json.dumps({"seconds": seconds, **fit}))
    distributed.leave_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", default="flow")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of the 1-process run (0: all cores)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    cores = os.cpu_count() or 1
    print(f"{args.family} on {args.data}, {args.epochs} epochs, device {args.device}, {cores} cores")
    print(f"{'processes':>9} {'threads each':>12} {'s/epoch':>8} {'speed-up':>8} {'best val bits/dim':>17}")
    base = None
    for n in (int(x) for x in args.nprocs.split(",")):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            own = [__file__, "--worker", "--out", out.name, "--family", args.family, "--data", args.data]
            own += ["--epochs", str(args.epochs), "--device", args.device]
            threads = max(1, cores // n)
            path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}
            if n == 1:
                cmd = [sys.executable, *own]
            else:
                cmd = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={n}",
                    *own,
                ]
            subprocess.run(cmd, env=env, check=True)
            result = json.loads(Path(out.name).read_text())
        per_epoch = result["seconds"] / result["epochs"]
        base = base or per_epoch
        print(
            f"{n:>9} {threads:>12} {per_epoch:>8.2f} {base / per_epoch:>8.2f} {result['best_validation']:>17.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
