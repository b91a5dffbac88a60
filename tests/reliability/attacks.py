"""Tools the abuse tests use to talk to a real server the way an attacker would: raw sockets for
framing, trickled bytes and upgrades that HTTP clients will not send, and a probe that measures how
long ``/readyz`` takes while something else runs."""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx


@dataclass
class RawResponse:
    status: int | None  # None: the server closed without an answer we could read
    head: str = ""
    body: bytes = b""
    seconds: float = 0.0  # from the first byte sent to the answer (or the close)


def _connect(url: str, timeout: float) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def _read_response(sock: socket.socket, deadline: float) -> tuple[int | None, str, bytes]:
    data = b""
    while time.time() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.time()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, OSError):
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = re.search(rb"content-length:\s*(\d+)", head, re.I)
            if length is None or len(rest) >= int(length.group(1)):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.1 (\d{3})", head)
    return (int(match.group(1)) if match else None), head.decode("latin-1"), body


def raw_request(url: str, head: str, chunks: Iterable[bytes] = (), pace: float = 0.0,
                timeout: float = 30.0, end_headers: bool = True) -> RawResponse:  # fmt: skip
    """Send ``head`` (request line and headers, without the blank line unless ``end_headers``) and then
    ``chunks`` as they are (the caller frames them), ``pace`` seconds apart; stop sending as soon as
    the server answers."""
    began = time.time()
    deadline = began + timeout
    with _connect(url, timeout) as sock:
        try:
            sock.sendall(head.encode("latin-1") + (b"\r\n\r\n" if end_headers else b""))
            for chunk in chunks:
                if select.select([sock], [], [], pace)[0]:
                    break  # answered (or closed) before the body was sent
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, text, body = _read_response(sock, deadline)
    return RawResponse(status, text, body, time.time() - began)


def chunked(data: bytes, size: int = 256 * 1024) -> Iterable[bytes]:
    """``data`` in HTTP/1.1 chunked framing."""
    for start in range(0, len(data), size):
        part = data[start : start + size]
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def websocket_upgrade(url: str, path: str, timeout: float = 10.0) -> RawResponse:
    host = urlsplit(url).netloc
    head = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")  # fmt: skip
    return raw_request(url, head, timeout=timeout)


@dataclass
class ReadyProbe:
    """``/readyz`` asked every ``every`` seconds from its own thread until stopped: the latencies."""

    url: str
    every: float = 0.02
    latencies: list[float] = field(default_factory=list)  # seconds; a failure counts as its timeout
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                began = time.perf_counter()
                try:
                    ok = http.get(self.url + "/readyz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - began if ok else 5.0)
                time.sleep(self.every)

    def during(self, work: Callable[[], Any]) -> Any:
        """Run ``work()`` while probing; returns its result."""
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            return work()
        finally:
            self._stop.set()
            thread.join(timeout=10)
