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


PRECISIONS = ("auto", "float32", "bf16")


def resolve_precision(precision: str, device: str) -> str:
    """``float32`` or ``bf16``: the arithmetic of the training loss's forward pass on ``device``
    (cpu or cuda, as :func:`resolve_device` answers). ``auto`` is bf16 on a GPU that has it
    (Ampere and later) and float32 elsewhere, so the CPU's numbers never change unless bf16 is
    asked for. ValueError naming --precision for an unknown name, or for bf16 on a GPU without it.

    Only the training loss runs in bf16 (plugins.common.training.fit); validation, evaluation,
    export and parity stay float32, so no served number depends on it."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if device != "cuda":
        return "bf16" if precision == "bf16" else "float32"
    import torch

    # Pre-Ampere GPUs emulate bf16 (slowly) or refuse it: auto keeps float32 there.
    supported = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        name = torch.cuda.get_device_name()
        raise ValueError(f"--precision bf16: {name} has no bfloat16 arithmetic; use --precision float32")
    if precision == "auto":
        return "bf16" if supported else "float32"
    return precision


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
