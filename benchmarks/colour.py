"""The autoregressive family (PixelCNN++) on `patches-rgb` at a fixed training budget, beside the codecs.

Measured in one run on this machine:
(a) with --sizes: training images per second (forward and backward, batch 32, 32x32x3) of a
    few network sizes, to choose the default by measurement;
(b) `genreg train autoregressive --data patches-rgb --time-budget B` (default 600 s): its wall
    time (training, evaluation, export, parity, store) and peak resident memory;
(c) test bits/dim of the stored model beside PNG and lossless WebP on the same 900 test
    patches (benchmarks/codecs.py), and the 0.8 x PNG target of issue 29;
(d) sampling time (1,024 steps, a pixel per step) at n = 1 and n = 16 through the serving
    runtime's loop (ONNX Runtime), against the family's PyTorch eager loop, and the peak
    resident memory of a process that loads the model and draws 16 samples.

Run: .venv/bin/python benchmarks/colour.py [--budget 600] [--sizes] [--store DIR] [-o key=value ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZES = [(32, 2), (48, 3), (64, 3), (64, 5), (96, 4)]  # (channels, gated residual blocks)


def sizes(seconds: float = 8.0) -> None:
    import torch

    from plugins.autoregressive.config import ARConfig
    from plugins.autoregressive.train import build

    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.randint(0, 256, (32, 3072)).float()
    print("| channels | blocks | parameters | train images/s (batch 32) |")
    print("|---:|---:|---:|---:|")
    for channels, blocks in SIZES:
        config = ARConfig(
            network="conv", conditional="logistic", channels=channels, layers=blocks, dropout=0.0
        )
        net = build(3072, 256, config, (32, 32, 3))
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            opt.zero_grad()
            (-net.log_prob(x).mean()).backward()
            opt.step()
            done += len(x)
        rate = done / (time.perf_counter() - start)
        params = sum(p.numel() for p in net.parameters())
        print(f"| {channels} | {blocks} | {params:,} | {rate:.1f} |")


def train(budget: float, options: list[str]) -> tuple[str, float, float]:
    """(name, wall seconds, peak RSS GiB) of `genreg train autoregressive --data patches-rgb`."""
    name = "autoregressive-patches-rgb"
    cmd = [sys.executable, "-m", "registry.cli", "train", "autoregressive", "--data", "patches-rgb"]
    cmd += ["--name", name, "--time-budget", str(budget), "--quiet"]
    for option in options:
        cmd += ["-o", option]
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.monotonic() - start
    return name, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def sampling(name: str) -> list[str]:
    import torch
    from steploop import rebuilt

    from plugins.autoregressive.config import ARConfig, ARModel
    from plugins.autoregressive.train import build
    from registry.contract.loading import get_plugins
    from registry.runtime.graphs import sample_noise
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    stored = get_model(name)
    loaded = LoadedModel(stored)
    family = get_plugins().get("autoregressive")
    config = ARConfig(**stored.meta["config"])
    net = rebuilt(stored, build(3072, 256, config, (32, 32, 3)))
    model = ARModel(config, net, 3072, 256, fit={}, image_shape=(32, 32, 3))
    spec = stored.graph("sampler")
    lines = [
        "| sampling (1,024 steps) | runtime loop (ONNX Runtime) | PyTorch eager loop |",
        "|---|---:|---:|",
    ]
    for n in (1, 16):
        start = time.perf_counter()
        loaded.sample(n, seed=0)
        ort = time.perf_counter() - start
        noise = sample_noise(spec, n, np.random.default_rng(0))
        start = time.perf_counter()
        with torch.no_grad():
            family.sample(model, noise)
        eager = time.perf_counter() - start
        lines.append(f"| n = {n} | {ort:.1f} s ({1e3 * ort / 1024:.1f} ms/step) | {eager:.1f} s |")
    return lines


def anchors() -> tuple[float, float]:
    """PNG and lossless WebP bits/dim on the test patches, as benchmarks/codecs.py measures them
    (loaded by path: a module named `codecs` would be the standard library's)."""
    import importlib.util

    from registry.datasets import load_patches_rgb

    spec = importlib.util.spec_from_file_location("genreg_codecs", ROOT / "benchmarks" / "codecs.py")
    codecs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codecs)
    data = load_patches_rgb()
    return (
        codecs.codec_bits_per_dim(data.test, data.image_shape, "PNG", compress_level=9),
        codecs.codec_bits_per_dim(data.test, data.image_shape, "WEBP", lossless=True, quality=100, method=6),
    )


def serving_memory(name: str) -> float:
    """Peak RSS (GiB) of a fresh process that loads the model and draws 16 samples."""
    code = (
        "import resource; from registry.runtime.models import LoadedModel; "
        "from registry.runtime.store import get_model; "
        f"LoadedModel(get_model({name!r})).sample(16, seed=0); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--sizes", action="store_true", help="only measure network sizes")
    parser.add_argument("--store", help="BENTOML_HOME (default: a temporary one)")
    parser.add_argument("-o", "--option", action="append", default=[], help="family option key=value")
    args = parser.parse_args()
    if args.sizes:
        sizes()
        return
    os.environ["BENTOML_HOME"] = args.store or tempfile.mkdtemp(prefix="genreg-bench-colour-")
    from registry.runtime.store import get_model

    name, wall, rss = train(args.budget, args.option)
    stored = get_model(name)
    fit = stored.meta.get("train", {})
    print(f"trained {stored.tag} ({stored.meta['config']}): {wall:.0f} s wall, peak RSS {rss:.2f} GiB")
    print(f"fit: { ({k: v for k, v in fit.items() if k != 'history'}) }")
    png, webp = anchors()
    bpd = stored.metrics["test"]["bits_per_dim"]
    print("| on the 900 test patches | bits/dim |")
    print("|---|---:|")
    print(f"| PNG | {png:.3f} |\n| WebP lossless | {webp:.3f} |\n| 0.8 x PNG | {0.8 * png:.3f} |")
    print(f"| genreg autoregressive (PixelCNN++, {args.budget:.0f}-s budget), exact | {bpd:.3f} |")
    print("\n".join(sampling(name)))
    print(f"peak RSS of a process that loads it and draws 16 samples: {serving_memory(name):.2f} GiB")


if __name__ == "__main__":
    main()
