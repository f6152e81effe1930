"""Bounded load and soak of the HTTP service on loopback: mixed /sample and /score traffic.

Each level runs N concurrent clients (an httpx async driver) for a fixed time over several
models, each client sending its next request as soon as the last one is answered; it reports
requests, errors, p50/p95/p99 latency, throughput and the server's resident memory (all its
processes). The soak keeps one level going for --soak seconds and compares memory after a
warm-up with memory at the end.

  .venv/bin/python benchmarks/load.py                       # 8, 32, 128 clients x 20 s, 10-minute soak
  .venv/bin/python benchmarks/load.py --seconds 5 --soak 0  # quick look
  .venv/bin/python benchmarks/load.py --url http://127.0.0.1:3000 --pid PID  # a running server

Without --url it trains four small models into a private temporary store (about a minute)
and starts `genreg serve` itself. Everything stays on 127.0.0.1 and is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = [("flow", "digits", ["--epochs", "5"]), ("gaussian", "digits", []), ("categorical", "digits", [])]
MODELS.append(("gaussian", "moons", []))


@dataclass
class Level:
    clients: int
    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float
    rss_start_mb: float
    rss_end_mb: float


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (BentoML's workers), in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        out = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout
        todo += [int(c) for c in out.split()]
    return total / 1024


def request_pool(models: list[dict], size: int = 400, seed: int = 0) -> list[tuple[str, bytes]]:
    """Prepared (path, body) pairs: half /sample, half /score, over every model that can.

    Score rows are drawn in each model's data range (integers 0..levels-1 on discrete data),
    so every request is valid and any error counted is the service's.
    """
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    pool = []
    for _ in range(size):
        m = rng.choice(models)
        dim, levels = int(m["data"]["dim"]), m["data"].get("levels")
        if rng.random() < 0.5 and "sample" in m["capabilities"]:
            body = {"model": m["name"], "n": rng.choice([1, 4, 16, 64]), "seed": rng.randrange(1 << 30)}
            pool.append(("/sample", json.dumps(body).encode()))
        else:
            rows = rng.choice([1, 8, 64])
            x = nrng.integers(0, levels, (rows, dim)) if levels else nrng.normal(size=(rows, dim))
            body = {"model": m["name"], "x": x.tolist(), "seed": rng.randrange(1 << 30)}
            pool.append(("/score", json.dumps(body).encode()))
    return pool


async def drive(base: str, pool: list[tuple[str, bytes]], clients: int, seconds: float) -> tuple[list, int]:
    """(latencies in s of the answered requests, error count) for ``clients`` closed-loop clients."""
    headers = {"content-type": "application/json"}
    token = os.environ.get("GENREG_API_TOKEN")
    if token:
        headers["authorization"] = f"Bearer {token}"
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        stop = time.perf_counter() + seconds

        async def one(i: int) -> None:
            nonlocal errors
            k = i
            while time.perf_counter() < stop:
                path, body = pool[k % len(pool)]
                k += clients
                start = time.perf_counter()
                try:
                    resp = await client.post(path, content=body, headers=headers)
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        await asyncio.gather(*(one(i) for i in range(clients)))
    return latencies, errors


def run_level(base: str, pid: int | None, pool, clients: int, seconds: float, warmup: float = 2.0) -> Level:
    asyncio.run(drive(base, pool, clients, warmup))
    before = rss_mb(pid) if pid else float("nan")
    start = time.perf_counter()
    latencies, errors = asyncio.run(drive(base, pool, clients, seconds))
    elapsed = time.perf_counter() - start
    after = rss_mb(pid) if pid else float("nan")
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return Level(
        clients,
        round(elapsed, 1),
        len(latencies) + errors,
        errors,
        *(round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)),
        round(len(latencies) / elapsed, 1),
        round(before, 1),
        round(after, 1),
    )


def table(levels: list[Level]) -> str:
    lines = [
        "| clients | s | requests | errors | p50 ms | p95 ms | p99 ms | req/s | RSS start MB | RSS end MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        lines.append(
            f"| {lv.clients} | {lv.seconds} | {lv.requests:,} | {lv.errors} | {lv.p50_ms} | {lv.p95_ms} "
            f"| {lv.p99_ms} | {lv.throughput:,.1f} | {lv.rss_start_mb:.0f} | {lv.rss_end_mb:.0f} |"
        )
    return "\n".join(lines)


def start_server(workers: int) -> tuple[subprocess.Popen, str]:
    os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="genreg-bench-load-"))
    for family, data, extra in MODELS:
        cmd = [sys.executable, "-m", "registry.cli", "train", family, "--data", data, "--quiet", *extra]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    sys.path.insert(0, str(ROOT / "tests"))
    from servers import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "registry.cli", "serve", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("server did not become ready")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--pid", type=int, help="the running server's pid, for its memory")
    parser.add_argument("--workers", type=int, default=2, help="workers of the server started here")
    parser.add_argument("--clients", default="8,32,128", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each level")
    parser.add_argument("--soak", type=float, default=600.0, help="soak duration in s (0: none)")
    parser.add_argument("--soak-clients", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    proc = None
    if args.url:
        base, pid = args.url.rstrip("/"), args.pid
    else:
        proc, base = start_server(args.workers)
        pid = proc.pid
    try:
        models = httpx.get(base + "/models", timeout=30, headers=_auth()).json()["models"]
        pool = request_pool(models)
        print(f"cpu count {os.cpu_count()}; {len(models)} models: {', '.join(m['name'] for m in models)}")
        levels = [run_level(base, pid, pool, int(c), args.seconds) for c in args.clients.split(",")]
        print(table(levels), flush=True)
        soak = None
        if args.soak > 0:
            soak = run_level(base, pid, pool, args.soak_clients, args.soak, warmup=30.0)
            growth = 100 * (soak.rss_end_mb / soak.rss_start_mb - 1)
            print(f"\nsoak ({args.soak:.0f} s after a 30 s warm-up):\n{table([soak])}")
            print(f"resident memory growth over the soak: {growth:+.1f}%")
        if args.json:
            args.json.write_text(
                json.dumps({"levels": [asdict(x) for x in levels], "soak": soak and asdict(soak)}, indent=2)
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


def _auth() -> dict[str, str]:
    token = os.environ.get("GENREG_API_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


if __name__ == "__main__":
    main()
