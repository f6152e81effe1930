"""Serving throughput, measured side by side in one run on this machine.

(a) ONNX Runtime vs PyTorch eager: flow log-likelihood rows/s at batch 1, 64 and 4096;
(b) in-process ONNX Runtime vs HTTP /score rows/s, batch 1 with 16 concurrent clients, and
    batch 1024;
(c) the same batch-1 load against a bare ASGI JSON echo (Starlette on uvicorn): the ceiling;
(d) start-up time to the first successful /sample, and the server's resident memory.

Run: .venv/bin/python benchmarks/serving.py [--seconds 5]
Trains a small flow on digits into a private temporary store first (about a minute).
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
    from registry.data import load_digits
    from registry.inference import LoadedModel
    from registry.store import get_model

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


async def http_load(base: str, body: bytes, rows: int, clients: int, seconds: float) -> float:
    headers = {"content-type": "application/json"}
    done = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await client.post("/score", content=body, headers=headers)
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                resp = await client.post("/score", content=body, headers=headers)
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


def serving(seconds: float) -> list[str]:
    from registry.data import load_digits
    from registry.inference import LoadedModel
    from registry.store import get_model

    data = load_digits().test
    # The same session settings as the service (GENREG_ORT_THREADS, default 1).
    threads = int(os.environ.get("GENREG_ORT_THREADS", "1"))
    loaded = LoadedModel(get_model("flow-digits"), providers=["CPUExecutionProvider"], threads=threads)
    one = data[:1]
    big = np.resize(data, (1024, 64)).astype(np.float32)
    body1 = json.dumps({"model": "flow-digits", "x": one.tolist(), "seed": 0}).encode()
    body1024 = json.dumps({"model": "flow-digits", "x": big.tolist(), "seed": 0}).encode()
    inproc1 = rate(lambda: loaded.score(one, "bound", seed=0), 1, seconds)
    inproc1024 = rate(lambda: loaded.score(big, "bound", seed=0), 1024, seconds)

    measured = {}
    for batching in (0, 4096):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "registry.cli", "serve", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env=dict(os.environ, GENREG_BATCH_MAX_ROWS=str(batching)),
        )
        try:
            wait_ready(base, proc, "/readyz")
            first = httpx.post(base + "/sample", json={"model": "flow-digits", "n": 1}, timeout=30)
            first.raise_for_status()
            startup = time.perf_counter() - start
            http1 = asyncio.run(http_load(base, body1, 1, 16, seconds))
            http1024 = asyncio.run(http_load(base, body1024, 1024, 1, seconds))
            http1024x4 = asyncio.run(http_load(base, body1024, 1024, 4, seconds))
            memory = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        measured[batching] = (startup, http1, http1024, http1024x4, memory)

    echo_dir = Path(tempfile.mkdtemp())
    (echo_dir / "echo_app.py").write_text(ECHO_APP)
    echo_port = free_port()
    echo = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "echo_app:app", "--port", str(echo_port), "--log-level", "warning"],
        cwd=echo_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        echo_base = f"http://127.0.0.1:{echo_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(echo_base + "/score", content=body1, headers={"content-type": "application/json"})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        echo1 = asyncio.run(http_load(echo_base, body1, 1, 16, seconds))
    finally:
        echo.terminate()
        echo.wait(timeout=30)

    # The same echo as a BentoML service: how much of the gap is the framework's own path.
    (echo_dir / "bento_echo.py").write_text(BENTO_ECHO)
    bento_port = free_port()
    bento = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "bento_echo:Echo", "--port", str(bento_port)],
        cwd=echo_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        bento_base = f"http://127.0.0.1:{bento_port}"
        wait_ready(bento_base, bento, "/readyz")
        bento1 = asyncio.run(http_load(bento_base, body1, 1, 16, seconds))
    finally:
        bento.terminate()
        bento.wait(timeout=30)

    lines = [
        "| measure | rows/s | ratio |",
        "|---|---|---|",
        f"| in-process ONNX Runtime, batch 1 | {inproc1:,.0f} | |",
        f"| bare ASGI echo, batch 1, 16 clients | {echo1:,.0f} | the HTTP ceiling |",
        f"| BentoML echo service, batch 1, 16 clients | {bento1:,.0f} | {bento1 / echo1:.2f} of echo: the framework's own cost |",
        f"| in-process ONNX Runtime, batch 1024 | {inproc1024:,.0f} | |",
    ]
    for batching, (_, http1, http1024, http1024x4, _) in measured.items():
        tag = f"batching {'off' if not batching else f'on (max {batching} rows)'}"
        lines += [
            f"| HTTP /score, batch 1, 16 clients, {tag} | {http1:,.0f} | {http1 / echo1:.2f} of echo (target >= 0.60) |",
            f"| HTTP /score, batch 1024, 1 client, {tag} | {http1024:,.0f} | {http1024 / inproc1024:.2f} of in-process |",
            f"| HTTP /score, batch 1024, 4 clients, {tag} | {http1024x4:,.0f} | {http1024x4 / inproc1024:.2f} of in-process |",
        ]
    lines.append("")
    for batching, (startup, *_, memory) in measured.items():
        lines.append(
            f"batching {batching or 'off'}: start-up to first successful /sample {startup:.2f} s; "
            f"server resident memory {memory:.0f} MB"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    args = parser.parse_args()
    train_model()
    print(f"cpu count {os.cpu_count()}\n")
    print("\n".join(onnx_vs_torch(args.seconds)))
    print()
    print("\n".join(serving(args.seconds)))


if __name__ == "__main__":
    main()
