"""Every family on `patches-rgb` at one training budget, beside the codecs and the peers (issue 26).

Two steps, so that models can be trained side by side (each with --threads) and judged together:

    # train genreg's families into one store (each `genreg train F --data patches-rgb`)
    .venv/bin/python benchmarks/image_table.py train flow vae gan --budget 600 --threads 1 --store S
    # the peers (benchmarks/image_peers.py) write .npz files with their samples and numbers
    # the table: every stored FAMILY-patches-rgb model in S, the codecs, and the peers' files
    .venv/bin/python benchmarks/image_table.py table --store S --peer glow.npz --peer pythae.npz ...

The table's columns, on the 900 test patches:
- bits/dim: the stored test metric (exact, or a true lower bound on log P(x), as the family
  serves it); "no likelihood" for the GAN; the codecs' actual compressed sizes;
- C2ST accuracy (k-NN) and MMD p-value: 100 samples of each model (seed 1, through the serving
  runtime for genreg's models) against the same 100 random test rows, with genreg's own tests
  (registry.runtime.two_sample), so every row is judged on the same footing; real validation
  patches are the reference row (the splits come from different parts of the photographs);
- training images/s: rows trained per second of training steps (the stored fit record);
- `/sample` n = 16: over HTTP, one `genreg serve` worker holding every genreg model here;
- server memory: peak RSS (VmHWM) of a fresh process that loads the model and draws 16 samples.
"""

from __future__ import annotations

import argparse
import importlib.util
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
sys.path.insert(0, str(ROOT / "tests"))  # servers.py: the real server on a loopback port

FAMILIES = ["flow", "vae", "gan", "autoregressive", "diffusion", "categorical", "gaussian"]
SAMPLES = 100


def _benchmark(name: str) -> Any:
    """A sibling benchmark module, loaded by path (`codecs` would be the standard library's)."""
    spec = importlib.util.spec_from_file_location(f"genreg_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(families: list[str], budget: float, threads: int | None, options: list[str]) -> None:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch takes its intra-op threads from it
    for family in families:
        cmd = [sys.executable, "-m", "registry.cli", "train", family, "--data", "patches-rgb"]
        cmd += ["--name", f"{family}-patches-rgb", "--time-budget", str(budget), "--quiet"]
        for option in options:
            family_of, _, setting = option.partition(":")
            if setting and family_of == family:
                cmd += ["-o", setting]
        start = time.monotonic()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        print(f"{family}: {time.monotonic() - start:.0f} s wall, peak RSS so far {rss:.2f} GiB", flush=True)


def judge(samples: np.ndarray, test: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(C2ST accuracy, MMD p-value) of ``samples`` against a seeded random subset of the test rows."""
    from registry.runtime.two_sample import c2st, mmd_test

    order = np.random.default_rng(seed).permutation(len(test))
    n = min(len(samples), len(test))
    real, fake = test[order[:n]].astype(np.float64), np.asarray(samples[:n], np.float64)
    return c2st(real, fake, seed=seed)["accuracy"], mmd_test(real, fake, seed=seed)["p_value"]


def _stored(names: list[str]) -> dict[str, Any]:
    from registry.runtime.store import ModelNotFound, get_model

    out = {}
    for name in names:
        try:
            out[name] = get_model(name)
        except ModelNotFound:  # a family not trained into this store is left out
            continue
    return out


def sample_times(names: list[str]) -> dict[str, float]:
    """`/sample` n = 16 seconds over HTTP, one worker holding every model in ``names``."""
    import httpx
    from servers import running_server

    log = Path(tempfile.mkdtemp(prefix="genreg-bench-table-")) / "server.log"
    times = {}
    with (
        running_server(log, GENREG_MODELS=",".join(names)) as server,
        httpx.Client(base_url=server.base, timeout=600) as client,
    ):
        for name in names:
            client.post("/sample", json={"model": name, "n": 1, "seed": 0}).raise_for_status()  # warm
            start = time.perf_counter()
            client.post("/sample", json={"model": name, "n": 16, "seed": 0}).raise_for_status()
            times[name] = time.perf_counter() - start
    return times


def table(peers: list[str], http: bool) -> None:
    from registry.datasets import load_patches_rgb
    from registry.runtime.models import LoadedModel

    data = load_patches_rgb()
    test = data.test
    colour = _benchmark("colour")
    png, webp = colour.anchors()
    stored = _stored([f"{family}-patches-rgb" for family in FAMILIES])
    times = sample_times(list(stored)) if http and stored else {}
    lines = [
        "| model | bits/dim | C2ST accuracy | MMD p | training images/s | `/sample` n = 16 | server memory |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    accuracy, p = judge(data.validation[np.random.default_rng(1).permutation(len(data.validation))], test)
    lines.append(f"| real validation patches (reference) | | {accuracy:.3f} | {p:.3f} | | | |")
    lines.append(f"| PNG (Pillow, level 9) | {png:.3f} | | | | | |")
    lines.append(f"| WebP lossless (Pillow, method 6) | {webp:.3f} | | | | | |")
    for name, model in stored.items():
        test_metrics = model.metrics.get("test", {})
        bpd = test_metrics.get("bits_per_dim")
        capabilities = model.meta.get("capabilities", [])
        kind = (
            "bound" if "bound" in capabilities else "exact" if "log_prob" in capabilities else "no likelihood"
        )
        fit = model.meta.get("train", {})
        rate = fit.get("rows_per_second") or 0.0
        start = time.perf_counter()
        samples = LoadedModel(model).sample(SAMPLES, seed=1)
        took = time.perf_counter() - start
        accuracy, p = judge(samples, test)
        memory = colour.serving_memory(name)
        shown = f"{bpd:.3f}" if bpd is not None else "no likelihood"
        served = f"{times[name]:.2f} s" if name in times else f"({took * 16 / SAMPLES:.2f} s in process)"
        lines.append(
            f"| genreg {model.meta['family']} ({fit.get('seconds', 0):.0f} s, {kind}) | {shown} "
            f"| {accuracy:.3f} | {p:.3f} | {rate:.0f} | {served} | {memory * 1024:.0f} MiB |"
        )
    for path in peers:
        peer = np.load(path, allow_pickle=False)
        name = str(peer["name"]) if "name" in peer else Path(path).stem
        accuracy, p = judge(peer["samples"], test)
        bpd = f"{float(peer['bits_per_dim']):.3f}" if "bits_per_dim" in peer else "no likelihood"
        rate = f"{float(peer['images_per_second']):.0f}" if "images_per_second" in peer else ""
        lines.append(f"| peer: {name} | {bpd} | {accuracy:.3f} | {p:.3f} | {rate} | not served | |")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("train", help="train genreg's families on patches-rgb into --store")
    run.add_argument("families", nargs="+", choices=FAMILIES)
    run.add_argument("--budget", type=float, default=600.0, help="training seconds per family")
    run.add_argument("--threads", type=int, help="torch threads (OMP_NUM_THREADS) for side-by-side runs")
    run.add_argument("-o", "--option", action="append", default=[], help="FAMILY:key=value")
    show = sub.add_parser("table", help="the table of every family in --store, the codecs and --peer files")
    show.add_argument("--peer", action="append", default=[], help="a peer's .npz (benchmarks/image_peers.py)")
    show.add_argument("--no-http", action="store_true", help="time /sample in process, not over HTTP")
    for p in (run, show):
        p.add_argument("--store", required=True, help="BENTOML_HOME holding the models")
    args = parser.parse_args()
    os.environ["BENTOML_HOME"] = args.store
    if args.action == "train":
        train(args.families, args.budget, args.threads, args.option)
    else:
        table(args.peer, not args.no_http)


if __name__ == "__main__":
    main()
