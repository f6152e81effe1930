"""What the step-sampler benchmarks (autoregressive, diffusion) share: a call rate, and the
interleaved comparison of the serving runtime's loop with the family's PyTorch eager loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def rate(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def rebuilt(stored: Any, net: Any) -> Any:
    """``net`` (the family's freshly built network) with the stored model's weights, in eval mode."""
    import numpy as np
    import torch

    weights = np.load(stored.file("weights.npz"))
    net.load_state_dict({k: torch.as_tensor(weights[k]) for k in weights.files})
    return net.eval()


def loop_against_eager(loaded: Any, family: Any, model: Any, seconds: float, what: str) -> list[str]:
    """The runtime's loop (ONNX Runtime) against ``family.sample`` on the same noise, n = 1 and 64,
    interleaved in 1-s slices (medians), as a Markdown table."""
    import numpy as np

    from registry.runtime.graphs import sample_noise

    spec = loaded.stored.graph("sampler")
    steps = spec.loop.steps
    measures: dict[str, list[float]] = {}
    for _ in range(max(1, round(seconds))):
        for n in (1, 64):
            noise = sample_noise(spec, n, np.random.default_rng(0))
            measures.setdefault(f"runtime{n}", []).append(rate(lambda n=n: loaded.sample(n, seed=0), 1.0))
            measures.setdefault(f"eager{n}", []).append(
                rate(lambda noise=noise: family.sample(model, noise), 1.0)
            )
    lines = [
        f"| sampling {what} | runtime loop (ONNX Runtime) | PyTorch eager loop | speed-up |",
        "|---|---|---|---|",
    ]
    for n in (1, 64):
        ort_rate, torch_rate = np.median(measures[f"runtime{n}"]), np.median(measures[f"eager{n}"])
        lines.append(
            f"| n = {n}, {steps} steps | {1e3 / ort_rate:.2f} ms ({1e6 / ort_rate / steps:.0f} us/step) "
            f"| {1e3 / torch_rate:.2f} ms ({1e6 / torch_rate / steps:.0f} us/step) | {ort_rate / torch_rate:.2f}x |"
        )
    return lines
