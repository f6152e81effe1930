"""Starting the real service (`genreg serve`) on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

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
