"""Serving throughput, measured side by side in one run on this machine.

(a) ONNX Runtime vs PyTorch eager: flow log-likelihood rows/s at batch 1, 64 and 4096;
(b) in-process ONNX Runtime vs HTTP /score rows/s, batch 1 with 16 concurrent clients, and
    batch 1024;
(c) the same batch-1 load against a bare ASGI JSON echo (Starlette on uvicorn): the ceiling;
    every HTTP load comes from benchmarks/loadgen.py (a client that is not itself the bottleneck),
    and the batch-1 echo and the V2 target rows also from httpx, as measured before;
(d) start-up time to the first successful /sample, and the server's resident memory;
(e) the Open Inference Protocol's /v2 infer with binary tensors (batch 1 against the echo,
    batch 1024 against in-process) and with JSON tensors (batch 1024), same model and seed.

Run: .venv/bin/python benchmarks/serving.py [--seconds 5] [--compare-root ../other-checkout]
(b)-(e) run interleaved in 1-s slices, so load from other jobs hits every measure alike;
--compare-root adds the server of another checkout (e.g. the previous commit) to the rounds.
Trains a small flow on digits into a private temporary store first (about a minute), unless
--store names a BENTOML_HOME that holds one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="genreg-bench-serving-")
ROOT = Path(__file__).resolve().parent.parent

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from loadgen import load  # noqa: E402

ECHO_APP = """
import json
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

async def echo(request: Request):
    return JSONResponse(json.loads(await request.body()))

app = Starlette(routes=[Route("/score", echo, methods=["POST"])])
"""


BENTO_ECHO = """
from typing import Any

import bentoml


@bentoml.service(workers=1)
class Echo:
    @bentoml.api(route="/score")
    async def score(self, body: dict[str, Any], /) -> dict[str, Any]:
        return body
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rate(fn, rows: int, seconds: float) -> float:
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += rows
    return n / (time.perf_counter() - start)


def train_model() -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "registry.cli",
            "train",
            "flow",
            "--data",
            "digits",
            "--epochs",
            "5",
            "--quiet",
        ],
        check=True,
        cwd=ROOT,
    )


def onnx_vs_torch(seconds: float) -> list[str]:
    import torch

    from plugins.flow.model import Flow
    from registry.datasets import load_digits
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    torch.set_num_threads(os.cpu_count() or 1)
    stored = get_model("flow-digits")
    loaded = LoadedModel(stored, providers=["CPUExecutionProvider"])
    cfg = stored.meta["config"]
    flow = Flow(
        64,
        17,
        n_blocks=cfg["n_blocks"],
        hidden=cfg["hidden"],
        depth=cfg["depth"],
        dropout=cfg["dropout"],
        clamp=cfg["clamp"],
        alpha=cfg["alpha"],
        seed=0,
    )
    with np.load(stored.file("weights.npz")) as w:
        flow.load_state_dict({k: torch.as_tensor(w[k]) for k in w.files})
    flow.eval()
    flow.freeze_inverse()
    data = load_digits().test
    lines = ["| batch | PyTorch eager rows/s | ONNX Runtime rows/s | ratio |", "|---|---|---|---|"]
    for batch in (1, 64, 4096):
        x = np.resize(data, (batch, 64)).astype(np.float32)
        u = np.random.default_rng(0).random(x.shape, dtype=np.float32)
        xt, ut = torch.as_tensor(x), torch.as_tensor(u)
        spec = stored.graph("scorer")

        def eager(xt=xt, ut=ut) -> None:
            with torch.inference_mode():
                flow.log_prob(xt + ut)

        def ort(spec=spec, x=x, u=u) -> None:
            loaded.run(spec, {"x": x, "u": u})

        a, b = rate(eager, batch, seconds), rate(ort, batch, seconds)
        lines.append(f"| {batch} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |")
    return lines


JSON_HEADERS = {"content-type": "application/json"}


async def http_load(
    base: str,
    body: bytes,
    rows: int,
    clients: int,
    seconds: float,
    path: str = "/score",
    headers: dict[str, str] = JSON_HEADERS,
) -> float:
    done = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        (await client.post(path, content=body, headers=headers)).raise_for_status()
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                resp = await client.post(path, content=body, headers=headers)
                resp.raise_for_status()
                done += rows

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.perf_counter() - start)


def wait_ready(base: str, proc: subprocess.Popen, path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server not ready")


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (BentoML runs workers as children)."""
    total = 0
    out = subprocess.run(
        ["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)], capture_output=True, text=True
    )
    for line in out.stdout.split():
        total += int(line)
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        grand = subprocess.run(
            ["ps", "-o", "rss=", "--ppid", child], capture_output=True, text=True
        ).stdout.split()
        total += sum(int(x) for x in grand)
    return total / 1024


def _launch(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def serving(seconds: float, compare_root: Path | None = None) -> list[str]:
    """In-process and HTTP rates, interleaved: every measure runs in 1-s slices, round-robin.

    The 2 cores are shared with other jobs whose load comes and goes; measured one after the
    other, a busy minute could fall on one side of a ratio only. Interleaved, it hits all.
    """
    from registry.datasets import load_digits
    from registry.runtime.models import LoadedModel
    from registry.runtime.scoring import score
    from registry.runtime.store import get_model

    data = load_digits().test
    # The same session settings as the service (GENREG_ORT_THREADS, default 1).
    threads = int(os.environ.get("GENREG_ORT_THREADS", "1"))
    loaded = LoadedModel(get_model("flow-digits"), providers=["CPUExecutionProvider"], threads=threads)
    one = data[:1]
    big = np.resize(data, (1024, 64)).astype(np.float32)
    body1 = json.dumps({"model": "flow-digits", "x": one.tolist(), "seed": 0}).encode()
    body1024 = json.dumps({"model": "flow-digits", "x": big.tolist(), "seed": 0}).encode()

    # The Open Inference Protocol's infer with the same rows: binary tensors both ways (the
    # binary data extension, as tritonclient sends them by default), and JSON tensors.
    v2_path = "/v2/models/flow-digits/infer"
    v2bin1, v2bin_headers1 = v2_binary_body(one)
    v2bin1024, v2bin_headers1024 = v2_binary_body(big)
    v2json1024 = v2_json_body(big)

    echo_dir = Path(tempfile.mkdtemp())
    (echo_dir / "echo_app.py").write_text(ECHO_APP)
    (echo_dir / "bento_echo.py").write_text(BENTO_ECHO)
    genreg = {
        "this checkout, batching off": (ROOT, 0),
        "this checkout, batching on (max 4096 rows)": (ROOT, 4096),
    }
    if compare_root is not None:
        genreg[f"{compare_root.name} (compared), batching off"] = (compare_root, 0)
    procs: dict[str, tuple[subprocess.Popen, str, str]] = {}
    started = time.perf_counter()
    for label, (root, batching) in genreg.items():
        port = free_port()
        cmd = [sys.executable, "-m", "registry.cli", "serve", "--port", str(port)]
        env = dict(os.environ, GENREG_BATCH_MAX_ROWS=str(batching))
        procs[label] = (_launch(cmd, root, env), f"http://127.0.0.1:{port}", "/readyz")
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "echo_app:app", "--port", str(port), "--log-level", "warning"]
    procs["echo"] = (_launch(cmd, echo_dir), f"http://127.0.0.1:{port}", "/score")
    port = free_port()
    cmd = [sys.executable, "-m", "bentoml", "serve", "bento_echo:Echo", "--port", str(port)]
    procs["bento echo"] = (_launch(cmd, echo_dir), f"http://127.0.0.1:{port}", "/readyz")
    rates: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rates.setdefault(key, []).append(value)

    startup, memory = {}, {}
    try:
        for label, (proc, base, ready) in procs.items():
            if label == "echo":
                _wait_echo(base, body1)
                continue
            wait_ready(base, proc, ready)
            if label in genreg:
                httpx.post(
                    base + "/sample", json={"model": "flow-digits", "n": 1}, timeout=30
                ).raise_for_status()
                startup[label] = time.perf_counter() - started  # servers start together
        for _ in range(max(1, round(seconds))):
            add("inproc1", rate(lambda: score(loaded, one, "bound", seed=0), 1, 1.0))
            add("inproc1024", rate(lambda: score(loaded, big, "bound", seed=0), 1024, 1.0))
            add("echo1", load(procs["echo"][1], "/score", body1, JSON_HEADERS, 16, 1.0))
            add("echo1 httpx", asyncio.run(http_load(procs["echo"][1], body1, 1, 16, 1.0)))
            add("bento1", load(procs["bento echo"][1], "/score", body1, JSON_HEADERS, 16, 1.0))
            for label in genreg:
                base = procs[label][1]
                add(f"{label}|1", load(base, "/score", body1, JSON_HEADERS, 16, 1.0))
                add(f"{label}|1024", 1024 * load(base, "/score", body1024, JSON_HEADERS, 1, 1.0))
                add(f"{label}|1024x4", 1024 * load(base, "/score", body1024, JSON_HEADERS, 4, 1.0))
                add(f"{label}|v2bin1", load(base, v2_path, v2bin1, v2bin_headers1, 16, 1.0))
                if label != "this checkout, batching off":
                    continue
                add("v2bin1024", 1024 * load(base, v2_path, v2bin1024, v2bin_headers1024, 1, 1.0))
                add("v2json1024", 1024 * load(base, v2_path, v2json1024, JSON_HEADERS, 1, 1.0))
                v2 = {"path": v2_path}
                add(
                    "v2bin1 httpx",
                    asyncio.run(http_load(base, v2bin1, 1, 16, 1.0, **v2, headers=v2bin_headers1)),
                )
                add(
                    "v2bin1024 httpx",
                    asyncio.run(http_load(base, v2bin1024, 1024, 1, 1.0, **v2, headers=v2bin_headers1024)),
                )
                add("v2bin1024 triton", triton_rate(base, big, 1.0))
        memory = {label: rss_mb(procs[label][0].pid) for label in genreg}
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
        for proc, _, _ in procs.values():
            proc.wait(timeout=30)

    mean = {key: float(np.mean(values)) for key, values in rates.items()}
    echo1, inproc1024 = mean["echo1"], mean["inproc1024"]
    lines = [
        "Client: benchmarks/loadgen.py (lean: under 55 us a request) unless the row says httpx.",
        "",
        "| measure | rows/s | ratio |",
        "|---|---|---|",
        f"| in-process ONNX Runtime, batch 1 | {mean['inproc1']:,.0f} | |",
        f"| bare ASGI echo, batch 1, 16 clients | {echo1:,.0f} | the HTTP ceiling |",
        f"| bare ASGI echo, batch 1, 16 clients, httpx | {mean['echo1 httpx']:,.0f} | the client's ceiling |",
        f"| BentoML echo service, batch 1, 16 clients | {mean['bento1']:,.0f} | {mean['bento1'] / echo1:.2f} of echo: the framework's own cost |",
        f"| in-process ONNX Runtime, batch 1024 | {inproc1024:,.0f} | |",
    ]
    for label in genreg:
        http1, http1024, http1024x4, v2bin1 = (
            mean[f"{label}|{k}"] for k in ("1", "1024", "1024x4", "v2bin1")
        )
        lines += [
            f"| HTTP /score, batch 1, 16 clients, {label} | {http1:,.0f} | {http1 / echo1:.2f} of echo |",
            f"| V2 infer, binary tensors, batch 1, 16 clients, {label} | {v2bin1:,.0f} | {v2bin1 / echo1:.2f} of echo |",
            f"| HTTP /score, batch 1024, 1 client, {label} | {http1024:,.0f} | {http1024 / inproc1024:.2f} of in-process (target >= 0.80) |",
            f"| HTTP /score, batch 1024, 4 clients, {label} | {http1024x4:,.0f} | {http1024x4 / inproc1024:.2f} of in-process |",
        ]
    echo_httpx = mean["echo1 httpx"]
    lines += [
        f"| V2 infer, binary tensors, batch 1, 16 clients, httpx | {mean['v2bin1 httpx']:,.0f} | {mean['v2bin1 httpx'] / echo_httpx:.2f} of echo with httpx (target >= 1.0) |",
        f"| V2 infer, binary tensors, batch 1024, 1 client | {mean['v2bin1024']:,.0f} | {mean['v2bin1024'] / inproc1024:.2f} of in-process (target >= 0.9) |",
        f"| V2 infer, binary tensors, batch 1024, 1 client, httpx | {mean['v2bin1024 httpx']:,.0f} | {mean['v2bin1024 httpx'] / inproc1024:.2f} of in-process |",
        f"| V2 infer, binary tensors, batch 1024, 1 client, tritonclient.http | {mean['v2bin1024 triton']:,.0f} | {mean['v2bin1024 triton'] / inproc1024:.2f} of in-process |",
        f"| V2 infer, JSON tensors, batch 1024, 1 client | {mean['v2json1024']:,.0f} | {mean['v2json1024'] / inproc1024:.2f} of in-process |",
    ]
    lines.append("")
    for label in genreg:
        lines.append(
            f"{label}: start-up to first successful /sample {startup[label]:.2f} s (servers started together); "
            f"server resident memory {memory[label]:.0f} MB"
        )
    return lines


def v2_binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """An infer request scoring ``x`` (kind bound, seed 0) with binary tensors in and out."""
    data = np.ascontiguousarray(x, dtype="<f4").tobytes()
    tensor = {
        "name": "x",
        "shape": list(x.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(data)},
    }
    params = {"kind": "bound", "seed": 0, "binary_data_output": True}
    head = json.dumps({"inputs": [tensor], "parameters": params}).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}
    return head + data, headers


def triton_rate(base: str, x: np.ndarray, seconds: float) -> float:
    """Rows/s scoring ``x`` with the protocol's own client, tritonclient.http (binary both ways)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(base.removeprefix("http://"))
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32), binary_data=True)
    params = {"kind": "bound", "seed": 0}
    try:
        return rate(lambda: client.infer("flow-digits", [tensor], parameters=params), len(x), seconds)
    finally:
        client.close()


def v2_json_body(x: np.ndarray) -> bytes:
    """The same request with JSON tensors both ways (flat data, as tritonclient writes it)."""
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
    return json.dumps({"inputs": [tensor], "parameters": {"kind": "bound", "seed": 0}}).encode()


def _wait_echo(base: str, body: bytes) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.post(base + "/score", content=body, headers={"content-type": "application/json"})
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument(
        "--store", help="a BENTOML_HOME holding flow-digits: measure it instead of training one"
    )
    parser.add_argument("--compare-root", type=Path, help="also measure the server of another checkout")
    parser.add_argument("--no-torch", action="store_true", help="skip (a), ONNX Runtime vs PyTorch")
    args = parser.parse_args()
    if args.store:
        os.environ["BENTOML_HOME"] = args.store
    else:
        train_model()
    print(f"cpu count {os.cpu_count()}\n")
    if not args.no_torch:
        print("\n".join(onnx_vs_torch(args.seconds)))
        print()
    print("\n".join(serving(args.seconds, args.compare_root)))


if __name__ == "__main__":
    main()
