"""ONNX Runtime sessions: the CUDA provider first when ONNX Runtime offers it, then the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# TF32 matmuls on the GPU moved a flow's scores far past the export parity allowance for
# little throughput (benchmarks/RESULTS.md, GPU serving): CUDA sessions keep full float32.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}


def available_providers() -> list[str]:
    """CUDA first when ONNX Runtime has it and a GPU answers, then CPU."""
    import onnxruntime as ort

    found = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in found]


def open_session(path: Path | bytes, providers: list[str] | None = None, threads: int = 0) -> Any:
    """An InferenceSession with every graph optimisation on; ``threads`` = 0 is ONNX Runtime's default.

    ``path`` may be the graph's bytes: the service opens what it has just hashed, so a file
    replaced between the checksum and the load cannot slip in.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    chosen = providers or available_providers()
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=[_with_options(p) for p in chosen])


def _with_options(provider: str) -> str | tuple[str, dict[str, str]]:
    options = PROVIDER_OPTIONS.get(provider)
    return (provider, options) if options else provider


def shrink_options() -> Any:
    """RunOptions that give the CPU arena's unused memory back when the call ends.

    ONNX Runtime's arena keeps its peak otherwise. Measured on a VAE scorer (20,000 rows): the
    worker stayed 307 MiB above its idle size with the arena as it is, 0 with shrinkage, and
    shrinkage cost nothing measurable at 1,024 rows (benchmarks/RESULTS.md, "Bounded requests").
    """
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options
