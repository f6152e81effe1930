"""The autoregressive family: exact bits/dim on digits, KL on 8gaussians, and sampling speed.

Measured in one run on this machine:
(a) quality: `genreg train autoregressive` with the default options on digits (time budget
    300 s) and on 8gaussians; test bits/dim (exact: log P(x) is the probability mass) and
    KL(data || model) in nats; with --conditionals, the softmax and discretised-logistic
    conditionals side by side on digits;
(b) speed: sampling 1 and 64 digits with the serving runtime's loop (ONNX Runtime, 64 steps)
    against the PyTorch eager loop of the same model and noise, interleaved in 1-s slices;
    time per step; and /sample of 64 digits over HTTP (the real server).

Run: .venv/bin/python benchmarks/autoregressive.py [--budget 300] [--conditionals] [--store DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def train(name: str, data: str, budget: float, options: list[str]) -> dict:
    from registry.runtime.store import get_model

    cmd = [sys.executable, "-m", "registry.cli", "train", "autoregressive", "--data", data, "--name", name]
    cmd += ["--time-budget", str(budget), "--quiet", *[a for o in options for a in ("-o", o)]]
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    stored = get_model(name)
    return {"stored": stored, "wall": time.monotonic() - start}


def quality(budget: float, conditionals: bool) -> list[str]:
    rows = ["| model | options | test | epochs (best) | train s | wall s (train + export + evaluation) |"]
    rows.append("|---|---|---|---|---|---|")
    runs = [("ar-digits", "digits", [])]
    if conditionals:
        runs += [("ar-digits-softmax", "digits", ["conditional=softmax"])]
    runs += [("ar-8gaussians", "8gaussians", [])]
    for name, data, options in runs:
        out = train(name, data, budget, options)
        test, fit = out["stored"].metrics["test"], out["stored"].meta["train"]
        figure = f"{test['bits_per_dim']:.4f} bits/dim" + (
            f", KL {test['kl']:.4f} nats" if "kl" in test else ""
        )
        rows.append(
            f"| {name} | {' '.join(options) or 'defaults'} | {figure} | {fit.get('epochs')} ({fit.get('best_epoch')}) "
            f"| {fit['seconds']:.0f} | {out['wall']:.0f} |"
        )
    return rows


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def speed(seconds: float) -> list[str]:
    import numpy as np
    import torch
    from servers import running_server

    from registry.contract.loading import get_plugins
    from registry.runtime.graphs import sample_noise
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    torch.set_num_threads(1)  # as the service's ONNX Runtime sessions (GENREG_ORT_THREADS=1)
    stored = get_model("ar-digits")
    loaded = LoadedModel(stored, providers=["CPUExecutionProvider"], threads=1)
    family = get_plugins().get("autoregressive")
    weights = np.load(stored.file("weights.npz"))
    from plugins.autoregressive.config import ARConfig, ARModel
    from plugins.autoregressive.train import build

    config = ARConfig(**stored.meta["config"])
    shape = tuple(stored.data["image_shape"]) if stored.data.get("image_shape") else None
    net = build(stored.data["dim"], stored.data["levels"], config, shape)
    net.load_state_dict({k: torch.as_tensor(weights[k]) for k in weights.files})
    model = ARModel(config, net.eval(), stored.data["dim"], stored.data["levels"], {}, shape)
    spec = stored.graph("sampler")
    steps = spec.loop.steps
    measures: dict[str, list[float]] = {}
    for _ in range(max(1, round(seconds))):
        for n in (1, 64):
            noise = sample_noise(spec, n, np.random.default_rng(0))
            runtime = rate(lambda n=n: loaded.sample(n, seed=0), 1.0)
            eager = rate(lambda noise=noise: family.sample(model, noise), 1.0)
            measures.setdefault(f"runtime{n}", []).append(runtime)
            measures.setdefault(f"eager{n}", []).append(eager)
    lines = [
        "| sampling digits | runtime loop (ONNX Runtime) | PyTorch eager loop | speed-up |",
        "|---|---|---|---|",
    ]
    for n in (1, 64):
        ort_rate, torch_rate = np.median(measures[f"runtime{n}"]), np.median(measures[f"eager{n}"])
        lines.append(
            f"| n = {n}, {steps} steps | {1e3 / ort_rate:.2f} ms ({1e6 / ort_rate / steps:.0f} us/step) "
            f"| {1e3 / torch_rate:.2f} ms ({1e6 / torch_rate / steps:.0f} us/step) | {ort_rate / torch_rate:.2f}x |"
        )
    import httpx

    log = Path(tempfile.mkdtemp(prefix="genreg-bench-ar-")) / "server.log"
    with (
        running_server(log, GENREG_MODELS="ar-digits") as server,
        httpx.Client(base_url=server.base) as client,
    ):
        body = {"model": "ar-digits", "n": 64, "seed": 0}
        client.post("/sample", json=body).raise_for_status()
        per = 1.0 / rate(lambda: client.post("/sample", json=body).raise_for_status(), seconds)
    lines.append(f"| /sample n = 64 over HTTP | {per * 1e3:.2f} ms per request | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=300, help="training time budget per model, seconds")
    parser.add_argument("--seconds", type=float, default=5, help="slices of the speed measures")
    parser.add_argument("--conditionals", action="store_true", help="also train the softmax conditional")
    parser.add_argument("--store", help="a BENTOML_HOME holding ar-digits: skip training, measure speed")
    args = parser.parse_args()
    os.environ["BENTOML_HOME"] = args.store or tempfile.mkdtemp(prefix="genreg-bench-ar-")
    print(f"cpu count {os.cpu_count()}\n")
    if not args.store:
        print("\n".join(quality(args.budget, args.conditionals)), "\n", flush=True)
    print("\n".join(speed(args.seconds)))


if __name__ == "__main__":
    main()
