"""ONNX Runtime's CUDA provider against its CPU provider and PyTorch, on genreg's flow scorer.

Self-contained for a GPU machine without bentoml (or scipy, scikit-learn): it needs numpy,
torch, onnxruntime or onnxruntime-gpu, and this repository's plugins/flow/model.py and
registry/export.py (plus onnx and onnxscript to export, which `--export-only` can do elsewhere).

1. Builds genreg's flow at the digits preset (64 dimensions, 17 levels, 6 coupling blocks of
   width 256) and trains it briefly on digit-like synthetic data, so the weights are not the
   initial ones; or loads one saved by `--export-only DIR` with `--from DIR`.
2. Exports the dequantisation-bound scorer (x, u -> log-likelihood) with genreg's exporter.
3. Throughput of the scorer at batch 1, 256 and 4096: ONNX Runtime CUDA and CPU providers,
   and PyTorch eager on the same device (numpy in, numpy out: host-device copies included,
   as in serving).
4. Parity with PyTorch in float64 on the CPU (the reference) and between ONNX Runtime CUDA and
   PyTorch CUDA, with TF32 off and on (PyTorch's matmul/cuDNN flags, ORT's use_tf32).

Where no CUDA is available it says so and prints the CPU figures. Where it is, the script
asserts that the CUDA session really runs on CUDAExecutionProvider (onnxruntime-gpu falls
back to the CPU silently when its CUDA libraries do not load) and that the TF32-off parity is
within the GPU tolerance.

    python benchmarks/gpu.py                        # export here, then benchmark
    python benchmarks/gpu.py --export-only /tmp/g   # on a machine with onnxscript
    python benchmarks/gpu.py --from /tmp/g          # on the GPU machine
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# plugins.flow.model needs torch only (not registry.datasets, whose toys need scipy).
from plugins.flow.model import Flow

DIM, LEVELS = 64, 17
PRESET = dict(n_blocks=6, hidden=256, depth=2, dropout=0.0, clamp=2.0, alpha=0.01, seed=0)
BATCHES = (1, 256, 4096)
# ONNX Runtime CUDA against PyTorch CUDA, both without TF32: float32 kernels that sum in a
# different order, on scores of about 100-300 nats.
GPU_TOLERANCE = 1e-3


class Bound(torch.nn.Module):
    """log p(x + u): the flow's dequantisation-bound scorer, as genreg exports it."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x + u)


def digit_like(n: int, seed: int) -> np.ndarray:
    """Correlated 0..16 images from an 8-factor latent model (a stand-in for digits)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(0).normal(size=(8, DIM)) * 1.5
    logits = rng.normal(size=(n, 8)) @ mix
    return np.clip(np.round(LEVELS / (1 + np.exp(-logits)) - 0.5), 0, LEVELS - 1).astype(np.float32)


def train_flow(steps: int, device: str) -> Flow:
    torch.manual_seed(0)
    flow = Flow(DIM, LEVELS, **PRESET).to(device)
    data = torch.as_tensor(digit_like(8192, 1), device=device)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    flow.train()
    for step in range(steps):
        batch = data[torch.randint(0, len(data), (256,), device=device)]
        loss = -flow.log_prob(batch + torch.rand_like(batch)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 0 or step == steps - 1:
            print(f"train step {step + 1}/{steps}: {loss.item() / (DIM * math.log(2)):.3f} bits/dim")
    flow.cpu().eval()
    flow.freeze_inverse()
    return flow


def export(flow: Flow, directory: Path) -> Path:
    from registry.pipeline.export import export_torch  # needs onnx + onnxscript

    path = directory / "scorer.onnx"
    example = torch.zeros(4, DIM)
    export_torch(Bound(flow), {"x": example, "u": example + 0.5}, "log_likelihood", path)
    torch.save(flow.state_dict(), directory / "flow.pt")
    return path


def load(directory: Path) -> tuple[Flow, Path]:
    flow = Flow(DIM, LEVELS, **PRESET)
    flow.load_state_dict(torch.load(directory / "flow.pt", weights_only=True))
    flow.eval()
    return flow, directory / "scorer.onnx"


def session(path: Path, provider: str, tf32: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if provider == "CUDAExecutionProvider":
        providers = [("CUDAExecutionProvider", {"use_tf32": "1" if tf32 else "0"}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


def timed(fn, repeats: int = 200, budget: float = 2.0) -> float:
    """Median seconds per call after warm-up: up to ``repeats`` calls or ``budget`` seconds."""
    for _ in range(3):
        fn()
    times: list[float] = []
    while len(times) < repeats and sum(times) < budget:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_scorer(flow: Flow, device: str):
    model = Bound(copy.deepcopy(flow)).to(device).eval()  # a copy: .to() moves parameters in place

    def run(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(x).to(device), torch.from_numpy(u).to(device))
            return out.cpu().numpy()

    return run


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="a folder written by --export-only")
    parser.add_argument("--export-only", type=Path, help="train, export to this folder, and stop")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--rows", type=int, default=4096, help="rows for the parity check")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    cuda_torch = torch.cuda.is_available()
    if args.source:
        flow, onnx_path = load(args.source)
    else:
        flow = train_flow(args.steps, "cuda" if cuda_torch else "cpu")
        folder = args.export_only or Path(tempfile.mkdtemp(prefix="genreg-gpu-"))
        folder.mkdir(parents=True, exist_ok=True)
        try:
            onnx_path = export(flow, folder)
        except ImportError as exc:  # onnx / onnxscript absent (e.g. on the GPU machine)
            print(
                f"cannot export here ({exc}); run --export-only DIR where the [train] extra is installed, then --from DIR"
            )
            return 2
        if args.export_only:
            print(f"exported {onnx_path} and flow.pt; run with --from {folder}")
            return 0

    if hasattr(ort, "preload_dlls") and cuda_torch:
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels that PyTorch brought
    offered = ort.get_available_providers()
    cuda = cuda_torch and "CUDAExecutionProvider" in offered
    print(f"torch {torch.__version__} (CUDA {'yes: ' + torch.cuda.get_device_name(0) if cuda_torch else 'no'}); "
          f"onnxruntime {ort.__version__} offers {offered}")  # fmt: skip
    if not cuda:
        why = "no GPU for PyTorch" if not cuda_torch else "this onnxruntime has no CUDAExecutionProvider"
        print(f"CUDA unavailable ({why}): CPU figures only")

    results: dict = {"cuda": cuda, "throughput": {}, "parity": {}}
    sessions = {"ort-cpu": session(onnx_path, "CPUExecutionProvider")}
    runners = {"torch-cpu": torch_scorer(flow, "cpu")}
    if cuda:
        sessions["ort-cuda"] = session(onnx_path, "CUDAExecutionProvider", tf32=False)
        sessions["ort-cuda-tf32"] = session(onnx_path, "CUDAExecutionProvider", tf32=True)
        for name in ("ort-cuda", "ort-cuda-tf32"):
            used = sessions[name].get_providers()
            assert used[0] == "CUDAExecutionProvider", f"{name} fell back to {used}"
        runners["torch-cuda"] = torch_scorer(flow, "cuda")
    for name, sess in sessions.items():
        runners[name] = lambda x, u, s=sess: s.run(["log_likelihood"], {"x": x, "u": u})[0]

    # Throughput (TF32 off for PyTorch; ort-cuda-tf32 shows ORT's TF32 separately).
    set_tf32(False)
    rng = np.random.default_rng(0)
    print(f"\n{'scorer':<16}" + "".join(f"{'batch ' + str(b):>22}" for b in BATCHES))
    for name, run in runners.items():
        row = {}
        for b in BATCHES:
            x, u = digit_like(b, 7), rng.random((b, DIM), dtype=np.float32)
            seconds = timed(lambda run=run, x=x, u=u: run(x, u))
            row[b] = {"ms": seconds * 1e3, "rows_per_s": b / seconds}
        results["throughput"][name] = row
        cells = "".join(f"{row[b]['ms']:>9.3f} ms {row[b]['rows_per_s']:>9.0f}/s" for b in BATCHES)
        print(f"{name:<16}{cells}")

    # Parity: float64 PyTorch on the CPU is the reference.
    x, u = digit_like(args.rows, 9), rng.random((args.rows, DIM), dtype=np.float32)
    with torch.no_grad():
        exact = Bound(copy.deepcopy(flow)).double()
        ref = exact(torch.from_numpy(x).double(), torch.from_numpy(u).double()).numpy()
    outputs: dict[str, np.ndarray] = {
        "ort-cpu": runners["ort-cpu"](x, u),
        "torch-cpu": runners["torch-cpu"](x, u),
    }
    if cuda:
        outputs["ort-cuda"] = runners["ort-cuda"](x, u)
        outputs["ort-cuda-tf32"] = runners["ort-cuda-tf32"](x, u)
        set_tf32(False)
        outputs["torch-cuda"] = runners["torch-cuda"](x, u)
        set_tf32(True)
        outputs["torch-cuda-tf32"] = runners["torch-cuda"](x, u)
        set_tf32(False)
    print(f"\nparity on {args.rows} rows (scores {ref.min():.0f}..{ref.max():.0f} nats): max abs difference")
    for name, out in outputs.items():
        diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
        results["parity"][f"{name} vs float64"] = diff
        print(f"  {name:<28} vs PyTorch float64 CPU  {diff:.3g}")
    if cuda:
        pairs = [("ort-cuda", "torch-cuda", "TF32 off"), ("ort-cuda-tf32", "torch-cuda-tf32", "TF32 on")]
        for a, b, label in pairs:
            diff = float(np.max(np.abs(outputs[a].astype(np.float64) - outputs[b])))
            results["parity"][f"ort-cuda vs torch-cuda ({label})"] = diff
            print(f"  ORT CUDA vs PyTorch CUDA, {label:<8}            {diff:.3g}")
        off = results["parity"]["ort-cuda vs torch-cuda (TF32 off)"]
        assert off <= GPU_TOLERANCE, f"ORT CUDA differs from PyTorch CUDA by {off:.3g} > {GPU_TOLERANCE}"
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
