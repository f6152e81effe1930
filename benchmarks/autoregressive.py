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

from steploop import loop_against_eager, rate, rebuilt

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


def speed(seconds: float) -> list[str]:
    import torch
    from servers import running_server

    from registry.contract.loading import get_plugins
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    torch.set_num_threads(1)  # as the service's ONNX Runtime sessions (GENREG_ORT_THREADS=1)
    stored = get_model("ar-digits")
    loaded = LoadedModel(stored, providers=["CPUExecutionProvider"], threads=1)
    from plugins.autoregressive.config import ARConfig, ARModel
    from plugins.autoregressive.train import build

    config = ARConfig(**stored.meta["config"])
    from registry.runtime.images import image_shape

    shape = image_shape(stored.data.get("image_shape"))
    net = rebuilt(stored, build(stored.data["dim"], stored.data["levels"], config, shape))
    model = ARModel(config, net, stored.data["dim"], stored.data["levels"], {}, shape)
    lines = loop_against_eager(loaded, get_plugins().get("autoregressive"), model, seconds, "digits")
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
