"""Data-parallel training over several processes with PyTorch's own launcher (torchrun).

`genreg train ... --nproc N` re-runs the same command under ``torch.distributed.run`` with N
processes on this machine; each joins the process group (gloo on CPU, NCCL on GPUs, one
process per GPU), trains on its share of every global batch (plugins.common.training.fit
wraps the loss in DistributedDataParallel), and only rank 0 exports and stores. For several
machines, start torchrun yourself on each (docs/deploy.md, Distributed training); `genreg
train` sees torchrun's environment (RANK, WORLD_SIZE, ...) and joins the group the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys


def world_size() -> int:
    """The group size torchrun announced (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def launch(argv: list[str], nproc: int) -> int:
    """Run ``genreg <argv>`` as ``nproc`` data-parallel processes here; their exit status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    # The cores shared out (torchrun would set 1 thread each, and say so in a banner).
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    return subprocess.run([*cmd, "-m", "registry.cli", *argv], env=env).returncode


DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str) -> str:
    """``cpu`` or ``cuda``: what ``device`` (cpu, cuda or auto) trains on here. ValueError naming
    --device for an unknown name, or for cuda where PyTorch sees no CUDA device (a CPU-only
    wheel, no driver, or no GPU): refused before any data is loaded, never a crash mid-training.
    ``auto`` falls back to the CPU."""
    if device not in DEVICES:
        raise ValueError(f"--device: {device!r} is not one of {', '.join(DEVICES)}")
    import torch

    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        build = torch.version.cuda
        why = (
            f"this PyTorch ({torch.__version__}) is built without CUDA"
            if build is None
            else (
                f"this PyTorch is built for CUDA {build}, but no CUDA device answers (driver or GPU missing)"
            )
        )
        raise ValueError(f"--device cuda: {why}; use --device cpu, or auto to take a GPU where there is one")
    return "cuda" if device == "cuda" or (device == "auto" and available) else "cpu"


def join_group(device: str) -> None:
    """Join the process group torchrun set up (no-op outside one): NCCL for CUDA, else gloo."""
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    if cuda:
        # One process per GPU: "cuda" in this process means its own device.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Each process gets its share of the cores, as a single process would get all of them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    dist.init_process_group("nccl" if cuda else "gloo")


def leave_group() -> None:
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
