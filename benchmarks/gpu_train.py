"""Training each image family on a GPU: images/s against the CPU, the GPU's busy share, and the
exported graphs' throughput on ONNX Runtime's CUDA provider at batch 1 and 256.

One command, sized for a few minutes of a lent GPU machine (an H200 with 16 cores). For each
family (flow, vae, gan, autoregressive, diffusion) on ``patches-rgb`` (--data):

1. trains it through the family's own ``train`` (the path ``genreg train`` takes) for a fixed
   --budget of seconds with --device (auto: cuda where PyTorch sees a GPU) and --precision
   (auto: bf16 autocast of the training loss on a GPU, float32 on the CPU), the families'
   default configuration for the data (``--option family.key=value`` changes one);
2. prints the training images/s (``FitResult.rows_per_second``: rows trained per second of
   training steps, the first five steps and validation left out; a family with its own loop
   that does not report it, the GAN today, gets epochs x rows / seconds, validation included,
   marked ``~``), against the CPU's: recorded on the 2-core development machine with
   ``--record-cpu FILE`` and read back with ``--cpu-rates FILE`` (a recorded family whose
   configuration has changed since is flagged as not like for like), or measured in the same
   run with ``--cpu-budget S`` (on that machine's cores);
3. prints the GPU's share of busy time while it trained: NVML's ``utilization.gpu`` (the share
   of each sample period in which at least one kernel ran; not how full the GPU was), sampled
   every 0.1 s through ``torch.cuda.utilization`` (nvidia-ml-py), else ``nvidia-smi``, over the
   whole ``train`` call (its validations included); and the peak GPU memory PyTorch allocated;
4. exports the family's graphs (as ``genreg train`` stores them) and times one call of each,
   numpy in and numpy out as the service calls it (host-device copies included), on ONNX
   Runtime's CUDA provider (full float32: no TF32, as registry.runtime.sessions opens it), at
   batch 1 and 256; its CPU provider too with --with-cpu-provider, or where there is no GPU.
   A step-loop sampler's call is one step: a sample takes ``steps`` of them. A CUDA session
   that fell back to the CPU (onnxruntime-gpu does so silently when its CUDA libraries do not
   load) is reported as such, never timed as CUDA.

Then, where ``benchmarks/image_peers.py`` exists, it runs it with ``--budget`` (the peers on the
same GPU); otherwise it says why it skips them. ``--json FILE`` writes every figure.

Where there is no CUDA it says so at the top and runs the same path on the CPU. ``--dry-run``
runs the whole path on the CPU in seconds (40 random 8x8x3 images, 2-s budgets, short
timings), as a check that the script works, wherever it is.

Here (the 2-core machine, no GPU):
    .venv/bin/python benchmarks/gpu_train.py --dry-run
    .venv/bin/python benchmarks/gpu_train.py --device cpu --budget 30 --no-serving \\
        --record-cpu benchmarks/gpu_train_cpu.json

On the GPU machine (its python3 has PyTorch with CUDA, onnx, onnxscript, scikit-learn, Pillow,
pluggy, typer and tqdm; carry what it lacks as wheels, as /work/.library/device/README.md says,
e.g. pydantic, pydantic-core, annotated-types and typing-inspection for Python 3.12). Its
onnxruntime is CPU-only: for the CUDA provider carry onnxruntime-gpu in parts first
(../shared/gpu/README.md), then:
    eval "$(bash .gpuwhl/assemble.sh)"; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_train.py \\
        --budget 30 --cpu-rates benchmarks/gpu_train_cpu.json --json $OUT/gpu_train.json
Not yet run on a GPU. Planned from the CPU run here: five 30-s trainings with their
validations, exports of 0.1 to 7 s each (on the CPU there too) and the timings come to about
4 to 5 minutes, inside one 10-minute call; the peers add their own budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import numpy as np
    import torch

    from registry.contract.dataset import Dataset
    from registry.contract.family import TrainControl
    from registry.contract.loading import get_plugins
    from registry.pipeline.distributed import resolve_device, resolve_precision
    from registry.runtime.cost import probe_feeds
    from registry.runtime.graphs import GraphSpec, by_file
    from registry.runtime.sessions import open_session
except ImportError as exc:  # on a bare GPU machine: say what to carry
    sys.exit(f"gpu_train: cannot import {exc.name!r}; carry it as a wheel (see this script's docstring)")

FAMILIES = ("flow", "vae", "gan", "autoregressive", "diffusion")
BATCHES = (1, 256)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def tiny_colour() -> Dataset:
    """40/10/10 random 8x8x3 images at 4 levels (the tests' size): the dry run's data."""
    rng = np.random.default_rng(0)

    def rows(n: int) -> np.ndarray:
        return rng.integers(0, 4, (n, 192)).astype(np.float32)

    return Dataset("tiny-colour", rows(40), rows(10), rows(10), levels=4, image_shape=(8, 8, 3))


class BusySampler:
    """The GPU's utilisation (percent of time a kernel ran, as NVML reports it) sampled on a
    thread while a block runs; ``how`` says which source answered, None where none did."""

    def __init__(self, device: torch.device, every: float = 0.1) -> None:
        self.device, self.every = device, every
        self.samples: list[float] = []
        self.how: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            return
        try:
            torch.cuda.utilization(device)
            self.how = "NVML utilization.gpu via torch.cuda.utilization"
        except Exception:  # no nvidia-ml-py, or NVML refused: try the command line
            if shutil.which("nvidia-smi") and self._smi() is not None:
                self.how = "nvidia-smi utilization.gpu"

    def _smi(self) -> float | None:
        index = str(self.device.index or 0)
        cmd = ["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        try:
            return float(subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip())
        except (ValueError, OSError, subprocess.TimeoutExpired):
            return None

    def _read(self) -> float | None:
        if self.how and self.how.startswith("NVML"):
            return float(torch.cuda.utilization(self.device))
        return self._smi()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> BusySampler:
        if self.how is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def train_rate(fit: dict[str, Any], rows: int) -> tuple[float, bool]:
    """(images/s, exact): the loop's own figure, else epochs x rows / seconds (validation in)."""
    if fit.get("rows_per_second"):
        return float(fit["rows_per_second"]), True
    seconds = fit.get("seconds") or 0.0
    return (fit.get("epochs", 0) * rows / seconds if seconds else 0.0), False


def train_one(
    name: str, data: Dataset, options: dict[str, str], device: str, precision: str, budget: float
) -> tuple[Any, Any, dict[str, Any]]:
    """Train family ``name`` for ``budget`` seconds on ``device``: (family, model, figures)."""
    family = get_plugins().get(name)
    config = family.Config.model_validate(options)
    control = TrainControl(
        seed=0, time_budget=budget, device=device, precision=precision, progress=False, log=lambda _: None
    )
    torch_device = (
        torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    )
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(torch_device)
    with BusySampler(torch_device) as busy:
        start = time.monotonic()
        model = family.train(data, config, control)
        seconds = time.monotonic() - start
    fit = dict(getattr(model, "fit", {}) or {})
    rate, exact = train_rate(fit, len(data.train))
    figures: dict[str, Any] = {
        "device": device,
        "precision": fit.get("precision", "float32 (own loop)" if not exact else precision),
        "images_per_second": rate,
        "rate_exact": exact,
        "train_seconds": seconds,
        "epochs": fit.get("epochs"),
        "stopped": fit.get("stopped"),
        "validation": fit.get("best_validation", fit.get("best_validation_mmd2")),
        "busy_percent": busy.mean,
        "busy_source": busy.how,
        "config": family.config_of(model).model_dump(mode="json"),
    }
    if device == "cuda":
        figures["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(torch_device)
    return family, model, figures


def timed(fn: Any, budget: float) -> float:
    """Median seconds of one call after a warm-up call (ONNX Runtime allocates on its first):
    calls until ``budget`` is spent, at least 3 unless one call alone outlasts it."""
    fn()
    times: list[float] = []
    while not times or (sum(times) < budget and len(times) < 200) or (len(times) < 3 and times[0] < budget):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def feeds_for(session: Any, spec: GraphSpec, rows: int, test: np.ndarray) -> dict[str, np.ndarray]:
    """The runtime's probe inputs for ``rows`` rows, with real test rows as a data input."""
    feeds = probe_feeds(session, spec, rows)
    if spec.role in ("scorer", "discriminator", "encoder") and spec.x_input in feeds:
        feeds[spec.x_input] = np.resize(test, (rows, test.shape[1])).astype(np.float32)
    return feeds


def serving(
    family: Any, model: Any, test: np.ndarray, providers: list[str], budget: float
) -> tuple[float, list[dict[str, Any]]]:
    """Export ``model``'s graphs and time one call of each: (export seconds, rows of figures)."""
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="genreg-gpu-train-") as tmp:
        start = time.monotonic()
        graphs = family.export(model, Path(tmp))
        export_seconds = time.monotonic() - start
        for spec in by_file(graphs).values():
            for provider in providers:
                chain = [provider] if provider == CPU else [provider, CPU]
                session = open_session(Path(tmp) / spec.file, chain)
                row: dict[str, Any] = {
                    "graph": spec.file,
                    "role": spec.role,
                    "kind": spec.kind,
                    "provider": provider,
                    "loop_steps": spec.loop.steps if spec.loop else None,
                }
                used = session.get_providers()[0]
                if used != provider:
                    row["fell_back_to"] = used
                    out.append(row)
                    continue
                for b in BATCHES:
                    feeds = feeds_for(session, spec, b, test)
                    seconds = timed(lambda s=session, f=feeds, o=[spec.output]: s.run(o, f), budget)
                    row[f"batch_{b}"] = {"ms": seconds * 1e3, "rows_per_s": b / seconds}
                out.append(row)
    return export_seconds, out


def ort_providers(want_cuda: bool, with_cpu: bool) -> tuple[list[str], str]:
    """The providers to time, and a line saying why CUDA is or is not among them."""
    import onnxruntime as ort

    if want_cuda and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels PyTorch brought
        except Exception as exc:  # the sessions' own fallback check reports what follows
            print(f"onnxruntime.preload_dlls: {exc}")
    offered = ort.get_available_providers()
    line = f"onnxruntime {ort.__version__} offers {', '.join(offered)}"
    if not want_cuda:
        return [CPU], line + "; no GPU here: CPU provider only"
    if CUDA not in offered:
        return [CPU], line + "; no CUDA provider (CPU-only onnxruntime: carry onnxruntime-gpu, ../shared/gpu)"
    # The CPU provider beside it only when asked: a diffusion scorer's call of 256 rows took 30 s
    # on it on 2 cores, time a lent GPU machine is better spent on.
    return ([CUDA, CPU] if with_cpu else [CUDA]), line


def run_peers(budget: float, device: str) -> None:
    script = ROOT / "benchmarks" / "image_peers.py"
    if not script.exists():
        print(f"\npeers: skipped: {script.relative_to(ROOT)} does not exist (yet)")
        return
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    cmd = [sys.executable, str(script), "--budget", f"{budget:g}"]
    if "--device" in help_text:
        cmd += ["--device", device]
    print(f"\npeers: {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        print(f"peers: exited with status {done.returncode}")


def parse_family_options(pairs: list[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for pair in pairs:
        target, sep, value = pair.partition("=")
        family, dot, key = target.partition(".")
        if not sep or not dot:
            sys.exit(f"--option {pair!r}: write family.key=value")
        found.setdefault(family, {})[key] = value
    return found


def cpu_reference(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    return json.loads(path.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="patches-rgb")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--budget", type=float, default=30.0, help="training seconds per family")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="auto", help="auto, float32 or bf16")
    parser.add_argument("--option", action="append", default=[], help="family.key=value")
    parser.add_argument("--cpu-rates", type=Path, help="CPU images/s recorded with --record-cpu")
    parser.add_argument("--cpu-budget", type=float, default=0.0, help="also train on this machine's CPU")
    parser.add_argument("--record-cpu", type=Path, help="write this run's images/s here (a CPU run)")
    parser.add_argument("--time-each", type=float, default=1.0, help="seconds per serving timing")
    parser.add_argument("--no-serving", action="store_true", help="skip export and ONNX Runtime timings")
    parser.add_argument(
        "--with-cpu-provider", action="store_true", help="on a GPU: time the CPU provider too"
    )
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="the whole path on the CPU in seconds")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()

    if args.dry_run:
        args.device, args.budget, args.time_each = "cpu", 2.0, 0.05
        args.cpu_budget = min(args.cpu_budget, 1.0)
        args.no_peers = True
    asked = "--dry-run" if args.dry_run else f"--device {args.device}"
    try:
        device = args.device = resolve_device(args.device)
        precision = args.precision = resolve_precision(args.precision, device)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2

    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    cores = os.cpu_count()
    print(
        f"torch {torch.__version__} on {platform.node()} ({cores} cores); python {platform.python_version()}"
    )
    if device == "cuda":
        print(f"training on {gpu}, precision {precision}")
    else:
        why = (
            asked
            if asked in ("--dry-run", "--device cpu")
            else f"no CUDA here (torch built for CUDA {torch.version.cuda}, no GPU answers)"
            if torch.version.cuda
            else f"no CUDA here (torch {torch.__version__} is a CPU build)"
        )
        print(f"GPU: none used ({why}): training on the CPU, precision {precision}")
    data = tiny_colour() if args.dry_run else load(args.data)
    print(f"data {data.name}: {len(data.train)} training rows of {data.dim} values ({data.image_shape})")
    options = parse_family_options(args.option)
    recorded = cpu_reference(args.cpu_rates)
    providers, ort_line = ([], "serving: skipped (--no-serving)")
    if not args.no_serving:
        providers, ort_line = ort_providers(device == "cuda", args.with_cpu_provider)
    print(ort_line)

    results: dict[str, Any] = {
        "device": device,
        "gpu": gpu,
        "cores": cores,
        "data": data.name,
        "budget": args.budget,
        "precision": precision,
        "families": {},
        "failed": {},
    }
    began = time.monotonic()
    for name in args.families:
        print(f"\n== {name}: training {args.budget:g} s on {device}", flush=True)
        try:
            results["families"][name] = one_family(
                name, data, options.get(name, {}), args, providers, recorded
            )
        except Exception as exc:  # one broken family must not cost the others their lent minutes
            traceback.print_exc()
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            results["failed"][name] = f"{type(exc).__name__}: {exc}"
        if device == "cuda":
            torch.cuda.empty_cache()
    results["seconds"] = time.monotonic() - began
    summary(results)
    if args.record_cpu is not None:
        record(results, args.record_cpu)
    if not args.no_peers:
        run_peers(args.budget, device)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def one_family(
    name: str,
    data: Dataset,
    options: dict[str, str],
    args: argparse.Namespace,
    providers: list[str],
    recorded: dict[str, Any],
) -> dict[str, Any]:
    """Train, compare with the CPU, export and time one family; its entry of the results."""
    device, precision = args.device, args.precision
    family, model, figures = train_one(name, data, options, device, precision, args.budget)
    entry: dict[str, Any] = {"train": figures}
    if args.cpu_budget > 0 and device == "cuda":
        _, _, cpu_figures = train_one(name, data, options, "cpu", "auto", args.cpu_budget)
        entry["cpu"] = {**cpu_figures, "source": f"measured here, {os.cpu_count()} cores"}
    elif name in recorded.get("families", {}):
        reference = recorded["families"][name]
        same = reference.get("config") == figures["config"] and recorded.get("data") == data.name
        entry["cpu"] = {
            **reference,
            "source": f"recorded ({recorded.get('cores')} cores, {recorded.get('when', '?')})"
            + ("" if same else "; other data or config: not like for like"),
        }
    say_training(name, entry)
    if providers:
        export_seconds, rows = serving(family, model, data.test, providers, args.time_each)
        entry["export_seconds"] = export_seconds
        entry["serving"] = rows
        say_serving(export_seconds, rows)
    return entry


def load(name: str) -> Dataset:
    from registry.datasets import load_dataset

    return load_dataset(name)


def rate_text(figures: dict[str, Any]) -> str:
    mark = "" if figures.get("rate_exact", True) else "~"
    return f"{mark}{figures['images_per_second']:,.0f}"


def say_training(name: str, entry: dict[str, Any]) -> None:
    t = entry["train"]
    busy = "unmeasured" if t["busy_percent"] is None else f"{t['busy_percent']:.0f}% ({t['busy_source']})"
    line = (
        f"{name}: {rate_text(t)} images/s trained ({t['precision']}), {t['epochs']} epochs in "
        f"{t['train_seconds']:.1f} s ({t['stopped']}), validation {t['validation']}"
    )
    if t["device"] == "cuda":
        line += f"; GPU busy {busy}; peak GPU memory {t['peak_gpu_bytes'] / 2**20:,.0f} MiB"
    print(line)
    cpu = entry.get("cpu")
    if cpu is not None and t["device"] == "cuda" and cpu.get("images_per_second"):
        ratio = t["images_per_second"] / cpu["images_per_second"]
        print(f"  CPU: {rate_text(cpu)} images/s ({cpu['source']}): GPU x{ratio:,.1f}")


def say_serving(export_seconds: float, rows: list[dict[str, Any]]) -> None:
    print(f"  export {export_seconds:.1f} s; one call of each graph (numpy in and out):")
    for row in rows:
        label = f"{row['role']}{'/' + row['kind'] if row['kind'] else ''} {row['provider'].removesuffix('ExecutionProvider')}"
        if "fell_back_to" in row:
            print(f"    {label:<28} fell back to {row['fell_back_to']}: not timed")
            continue
        cells = "  ".join(
            f"batch {b}: {row[f'batch_{b}']['ms']:8.3f} ms {row[f'batch_{b}']['rows_per_s']:>10,.0f} rows/s"
            for b in BATCHES
        )
        steps = f"  (one of {row['loop_steps']} steps)" if row["loop_steps"] else ""
        print(f"    {label:<28} {cells}{steps}")


def summary(results: dict[str, Any]) -> None:
    print(f"\nsummary ({results['data']}, {results['budget']:g} s each, {results['seconds']:.0f} s in all)")
    print("(* a CPU figure recorded on other data or with another configuration: not like for like)")
    print(f"{'family':<16}{'device':<8}{'precision':<20}{'images/s':>12}{'CPU images/s':>16}{'GPU busy':>10}")
    for name, entry in results["families"].items():
        t, cpu = entry["train"], entry.get("cpu") or {}
        busy = "-" if t["busy_percent"] is None else f"{t['busy_percent']:.0f}%"
        cpu_rate = rate_text(cpu) if cpu.get("images_per_second") else "-"
        cpu_rate += "*" if "not like for like" in cpu.get("source", "") else ""
        print(f"{name:<16}{t['device']:<8}{t['precision']:<20}{rate_text(t):>12}{cpu_rate:>16}{busy:>10}")


def record(results: dict[str, Any], path: Path) -> None:
    """This run's training figures as the CPU reference a GPU run reads with --cpu-rates."""
    if results["device"] != "cpu":
        print(f"--record-cpu: this run trained on {results['device']}, not the CPU: nothing written")
        return
    families = {
        name: {k: entry["train"][k] for k in ("images_per_second", "rate_exact", "precision", "config")}
        for name, entry in results["families"].items()
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    payload = {
        "cores": results["cores"],
        "data": results["data"],
        "budget": results["budget"],
        "when": time.strftime("%Y-%m-%d") + (f", {commit.stdout.strip()}" if commit.returncode == 0 else ""),
        # Other people's work shares the development machine's cores: say how busy it was.
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "families": families,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"CPU images/s written to {path}")


if __name__ == "__main__":
    sys.exit(main())
