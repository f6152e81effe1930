"""A family at image scale (autoregressive: PixelCNN++; diffusion: U-Net) on `patches-rgb` at a
fixed training budget, beside the codecs.

Measured in one run on this machine:
(a) with --sizes: training images per second (forward and backward, 32x32x3) of a few network
    sizes, to choose the default by measurement;
(b) `genreg train FAMILY --data patches-rgb --time-budget B` (default 600 s): its wall time
    (training, evaluation, export, parity, store) and peak resident memory;
(c) test bits/dim of the stored model beside PNG and lossless WebP on the same 900 test
    patches (benchmarks/codecs.py), and the 0.8 x PNG target of issue 29;
(d) sampling time (autoregressive: 1,024 steps, a pixel per step; diffusion: its default 100
    steps) at n = 1 and n = 16 through the serving runtime's loop (ONNX Runtime), against the
    family's PyTorch eager loop, and the peak resident memory of a process that loads the model
    and draws 16 samples; --samples PATH saves 100 samples (rows) for a two-sample comparison
    with a peer (benchmarks/diffusion_peer.py --compare PATH).

Run: .venv/bin/python benchmarks/colour.py [--family diffusion] [--budget 600] [--sizes]
         [--store DIR] [--samples PATH] [-o key=value ...]
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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # servers.py: the real server on a loopback port

SIZES = [(32, 2), (48, 3), (64, 3), (64, 5), (96, 4)]  # (channels, gated residual blocks)
# diffusion: (network, channels, mults, blocks a resolution, batch)
DIFFUSION_SIZES = [
    ("conv", 32, (1,), 2, 64),
    ("unet", 32, (1, 2, 2), 1, 64),
    ("unet", 32, (1, 2, 2), 2, 64),
    ("unet", 48, (1, 2, 2), 1, 64),
    ("unet", 32, (1, 2, 4), 2, 64),
]


def diffusion_sizes(seconds: float = 8.0) -> None:
    import torch

    from plugins.diffusion.config import DiffusionConfig
    from plugins.diffusion.train import build, draws

    torch.set_num_threads(os.cpu_count() or 1)
    print("| network | channels | mults | blocks | parameters | train images/s (batch 64, 1 step a row) |")
    print("|---|---:|---|---:|---:|---:|")
    for network, channels, mults, blocks, batch in DIFFUSION_SIZES:
        config = DiffusionConfig(
            network=network, predict="gaussian", channels=channels, mults=mults, blocks=blocks, dropout=0.0
        )
        net = build(3072, 256, config, (32, 32, 3))
        x = torch.randint(0, 256, (batch, 3072)).float()
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            opt.zero_grad()
            (-net.bound(x, *draws(batch, 3072, 1, g)).mean()).backward()
            opt.step()
            done += batch
        rate = done / (time.perf_counter() - start)
        params = sum(p.numel() for p in net.parameters())
        print(f"| {network} | {channels} | {mults} | {blocks} | {params:,} | {rate:.1f} |")


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


def train(family: str, budget: float, options: list[str]) -> tuple[str, float, float]:
    """(name, wall seconds, peak RSS GiB) of `genreg train FAMILY --data patches-rgb`."""
    name = f"{family}-patches-rgb"
    cmd = [sys.executable, "-m", "registry.cli", "train", family, "--data", "patches-rgb"]
    cmd += ["--name", name, "--time-budget", str(budget), "--quiet"]
    for option in options:
        cmd += ["-o", option]
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.monotonic() - start
    return name, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def eager_model(family: str, stored: Any) -> Any:
    """The family's trained-model record rebuilt in PyTorch from the stored weights."""
    from steploop import rebuilt

    if family == "autoregressive":
        from plugins.autoregressive.config import ARConfig, ARModel
        from plugins.autoregressive.train import build

        config = ARConfig(**stored.meta["config"])
        net = rebuilt(stored, build(3072, 256, config, (32, 32, 3)))
        return ARModel(config, net, 3072, 256, fit={}, image_shape=(32, 32, 3))
    from plugins.diffusion.config import DiffusionConfig, DiffusionModel
    from plugins.diffusion.train import build

    config = DiffusionConfig(**stored.meta["config"])
    net = rebuilt(stored, build(3072, 256, config, (32, 32, 3)))
    return DiffusionModel(config, net, 3072, 256, fit={}, image_shape=(32, 32, 3))


def sampling(family: str, name: str) -> list[str]:
    import torch

    from registry.contract.loading import get_plugins
    from registry.runtime.graphs import sample_noise
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    stored = get_model(name)
    loaded = LoadedModel(stored)
    plugin = get_plugins().get(family)
    model = eager_model(family, stored)
    spec = stored.graph("sampler")
    steps = spec.loop.steps
    lines = [
        f"| sampling ({steps:,} steps) | runtime loop (ONNX Runtime) | PyTorch eager loop |",
        "|---|---:|---:|",
    ]
    for n in (1, 16):
        start = time.perf_counter()
        loaded.sample(n, seed=0)
        ort = time.perf_counter() - start
        noise = sample_noise(spec, n, np.random.default_rng(0))
        start = time.perf_counter()
        with torch.no_grad():
            plugin.sample(model, noise)
        eager = time.perf_counter() - start
        lines.append(f"| n = {n} | {ort:.1f} s ({1e3 * ort / steps:.1f} ms/step) | {eager:.1f} s |")
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
    """Peak RSS (GiB) of a fresh process that loads the model and draws 16 samples: its VmHWM,
    the high-water mark of its own address space (getrusage's ru_maxrss is not: Linux carries the
    forking parent's peak across exec, which read 0.75 GiB for every model from a large parent)."""
    code = (
        "import re; from pathlib import Path; from registry.runtime.models import LoadedModel; "
        "from registry.runtime.store import get_model; "
        f"LoadedModel(get_model({name!r})).sample(16, seed=0); "
        "kib = int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1)); "
        "print(kib / 2**20)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def over_http(names: list[str]) -> list[str]:
    """`/sample` at n = 1 and 16 (JSON rows) over HTTP from one `genreg serve` worker holding
    ``names``, and the server's resident memory (all its processes) loaded and at its peak."""
    import httpx
    from servers import running_server, status_kib

    log = Path(tempfile.mkdtemp(prefix="genreg-bench-colour-")) / "server.log"
    lines = ["| over HTTP, one worker | n = 1 | n = 16 |", "|---|---:|---:|"]
    with (
        running_server(log, GENREG_MODELS=",".join(names)) as server,
        httpx.Client(base_url=server.base, timeout=300) as client,
    ):
        loaded = server.rss_kib() / 2**20
        for name in names:
            times = []
            for n in (1, 16):
                start = time.perf_counter()
                client.post("/sample", json={"model": name, "n": n, "seed": 0}).raise_for_status()
                times.append(time.perf_counter() - start)
            lines.append(f"| `/sample` {name} | {times[0]:.2f} s | {times[1]:.2f} s |")
        peak = sum(status_kib(pid, "VmHWM") for pid in [server.proc.pid, *server.workers()]) / 2**20
    lines.append(
        f"\nserver resident memory with {', '.join(names)}: {loaded:.2f} GiB loaded, peaks {peak:.2f} GiB"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["autoregressive", "diffusion"], default="autoregressive")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds")
    parser.add_argument("--samples", help="save 100 samples (rows, levels) to this .npy")
    parser.add_argument("--reuse", action="store_true", help="measure the model in --store, no training")
    parser.add_argument("--http", nargs="*", help="only time /sample over HTTP for these stored models")
    parser.add_argument("--sizes", action="store_true", help="only measure network sizes")
    parser.add_argument("--store", help="BENTOML_HOME (default: a temporary one)")
    parser.add_argument("-o", "--option", action="append", default=[], help="family option key=value")
    args = parser.parse_args()
    if args.sizes:
        (diffusion_sizes if args.family == "diffusion" else sizes)()
        return
    os.environ["BENTOML_HOME"] = args.store or tempfile.mkdtemp(prefix="genreg-bench-colour-")
    if args.http:
        print("\n".join(over_http(args.http)))
        return
    from registry.runtime.store import get_model

    if args.reuse:
        name = f"{args.family}-patches-rgb"
    else:
        name, wall, rss = train(args.family, args.budget, args.option)
    stored = get_model(name)
    fit = stored.meta.get("train", {})
    if not args.reuse:
        print(f"trained {stored.tag} ({stored.meta['config']}): {wall:.0f} s wall, peak RSS {rss:.2f} GiB")
    print(f"fit: { ({k: v for k, v in fit.items() if k != 'history'}) }")
    png, webp = anchors()
    bpd = stored.metrics["test"]["bits_per_dim"]
    print("| on the 900 test patches | bits/dim |")
    print("|---|---:|")
    print(f"| PNG | {png:.3f} |\n| WebP lossless | {webp:.3f} |\n| 0.8 x PNG | {0.8 * png:.3f} |")
    what = {"autoregressive": "PixelCNN++, exact", "diffusion": "U-Net, a true bound"}[args.family]
    print(f"| genreg {args.family} ({what}, {args.budget:.0f}-s budget) | {bpd:.3f} |")
    print("\n".join(sampling(args.family, name)))
    if args.samples:
        from registry.runtime.models import LoadedModel

        start = time.perf_counter()
        np.save(args.samples, LoadedModel(stored).sample(100, seed=1))
        print(f"100 samples saved to {args.samples} in {time.perf_counter() - start:.1f} s")
    print(f"peak RSS of a process that loads it and draws 16 samples: {serving_memory(name):.2f} GiB")


if __name__ == "__main__":
    main()
