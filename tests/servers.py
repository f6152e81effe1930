"""Starting the real service (`genreg serve`) on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from registry.runtime.scoring import draw_weight

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid: int, key: str) -> int:
    """A /proc/PID/status figure in KiB (VmRSS, VmHWM, ...); 0 where it has none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Server:
    base: str
    proc: subprocess.Popen
    log_path: Path

    def workers(self) -> list[int]:
        """Pids of the worker processes (the serve process's children, recursively)."""
        found, todo = [], [self.proc.pid]
        while todo:
            out = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout
            kids = [int(p) for p in out.split()]
            found += kids
            todo += kids
        return found

    def rss_kib(self) -> int:
        """Resident memory of the serve process and all its descendants, in KiB."""
        total = 0
        for pid in [self.proc.pid, *self.workers()]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total


@contextmanager
def running_server(
    log_path: Path, workers: int = 1, timeout: float = 120, args: tuple[str, ...] = (), **env: str
) -> Iterator[Server]:
    """The service with ``env`` added to the environment (and ``args`` to `genreg serve`);
    stopped (TERM, then KILL) on exit."""
    port = free_port()
    full_env = dict(os.environ, **env)
    cmd = [sys.executable, "-m", "registry.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*cmd, "--workers", str(workers), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(server, timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(server.base + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.proc.kill()
            raise RuntimeError(f"server did not become ready:\n{server.log_path.read_text()[-3000:]}")
        time.sleep(0.3)


class PeakRSS(threading.Thread):
    """The peak of a process's resident memory, sampled every 10 ms and from the kernel's VmHWM."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            except OSError:  # the process has gone
                return
            time.sleep(0.01)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, status_kib(self.pid, "VmHWM"))


def largest_bodies(info: dict, real: list, published: dict) -> list[tuple[str, dict]]:
    """The largest body the published limits allow on each endpoint for one model: ``info`` is its
    GET /models entry, ``real`` rows to repeat into ``x``, ``published`` the server's caps
    (max_rows, max_draws, max_n, max_two_sample). tests/test_bounded.py and
    benchmarks/request_memory.py send them."""
    name, bodies = info["name"], []
    for kind, limit in info["score_rows"].items():
        k = 1
        if kind == "bound":  # the largest rows x k among the published rectangles
            k = max(
                range(1, published["max_draws"] + 1),
                key=lambda k: min(published["max_rows"], limit // draw_weight(k), info["body_rows"]) * k,
            )
        rows = min(published["max_rows"], limit // draw_weight(k), info["body_rows"])
        x = (real * (rows // len(real) + 1))[:rows]
        bodies.append(("/score", {"model": name, "x": x, "kind": kind, "k": k}))
    if info["sample_rows"] is not None:
        steps = info["max_steps"] or info["steps"]
        n = min(published["max_n"], info["sample_n"], info["sample_rows"] // draw_weight(steps))
        body = {"model": name, "n": n, "seed": 0}
        if info["max_steps"]:
            body["steps"] = steps
        bodies.append(("/sample", body))
        most = min(published["max_two_sample"], info["two_sample_rows"])
        x_rows = min(most, info["body_rows"])
        n_model = min(most, info["sample_n"], info["sample_rows"] // draw_weight(info["steps"]))
        x = (real * (x_rows // len(real) + 1))[:x_rows]
        if min(x_rows, n_model) >= 10:
            for test in ("mmd", "c2st"):  # the MMD null's memory is one chunk's, whatever its permutations
                body = {"model": name, "x": x, "test": test, "n_model": n_model}
                bodies.append(("/two_sample_test", body))
    if info["latent_dim"] is not None:  # the latent space: the published rows, drawing where it may
        rows = min(published["max_rows"], info["latent_rows"]["encode"], info["body_rows"])
        x = (real * (rows // len(real) + 1))[:rows]
        draw = info["latent"] == "gaussian"
        bodies.append(("/encode", {"model": name, "x": x, "seed": 0} | ({"sample": True} if draw else {})))
        rows = min(published["max_rows"], info["latent_rows"]["decode"])
        z = [[0.5] * info["latent_dim"]] * rows
        body = {"model": name, "z": z, "seed": 0} | ({"sample": True} if info["decode_sample"] else {})
        bodies.append(("/decode", body))
    return bodies
