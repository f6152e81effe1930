"""A lean closed-loop HTTP/1.1 load generator for the serving benchmarks.

``connections`` keep-alive connections, one request in flight on each, the request's bytes
built once. It costs the client under 55 us a request (a bare uvicorn echo answers it
17,500-18,500 requests a second with httptools), where httpx's AsyncClient costs about 900 us
(the same echo answers it 1,044-1,109 a second): with httpx as the client the batch-1 rows
measured httpx (benchmarks/RESULTS.md, "The load generator, and genreg's routes in front of
BentoML's middlewares").
"""

from __future__ import annotations

import selectors
import socket
import time
from urllib.parse import urlsplit


def request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection:
    __slots__ = ("buf", "end", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.end = sock, bytearray(), -1

    def send(self, request: bytes) -> None:
        self.buf.clear()
        self.end = -1
        # Blocking sockets throughout: sendall returns once the kernel holds the request, and
        # recv is called only when the selector says there is something to read.
        self.sock.sendall(request)

    def received(self) -> bool:
        """Read what is there; True once the whole response is in (RuntimeError unless 2xx)."""
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        self.buf += chunk
        if self.end < 0:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return False
            head = bytes(self.buf[:head_end]).lower()
            status = int(head[9:12])
            if not 200 <= status < 300:
                raise RuntimeError(f"status {status}: {bytes(self.buf[:300])!r}")
            at = head.index(b"content-length:") + len(b"content-length:")
            stop = head.find(b"\r\n", at)
            self.end = head_end + 4 + int(head[at : stop if stop > 0 else None])
        return len(self.buf) >= self.end


def load(
    base: str, path: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
) -> float:
    """Requests answered per second over ``seconds`` (after one warm-up request on each connection)."""
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = request_bytes(host, port, path, body, headers)
    selector = selectors.DefaultSelector()
    conns = []
    try:
        for _ in range(connections):
            sock = socket.create_connection((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock)
            conns.append(conn)
            conn.send(request)
            while not conn.received():
                pass
            selector.register(sock, selectors.EVENT_READ, conn)
        for conn in conns:
            conn.send(request)
        done, in_flight = 0, connections
        start = time.perf_counter()
        stop = start + seconds
        while in_flight:
            for key, _ in selector.select():
                conn = key.data
                if not conn.received():
                    continue
                done += 1
                if time.perf_counter() < stop:
                    conn.send(request)
                else:
                    in_flight -= 1
                    selector.unregister(conn.sock)
        return done / (time.perf_counter() - start)
    finally:
        selector.close()
        for conn in conns:
            conn.sock.close()
