"""A real postLink receiver on 127.0.0.1 for tests: records what arrives, misbehaves on cue.

The path chooses the behaviour, so one receiver serves every test:

    /ok/...            200
    /status/<code>/... that status (500, 302 with a Location, 404, …)
    /hang/...          reads the body, then answers nothing for ``hang_seconds``
    /drop/...          reads the body, then closes the connection without an answer
    /slow/...          answers 200 after ``slow_seconds`` (to catch attempts in flight)
    /trickle/...       sends its status line a byte every 0.3 s (each read is quick,
                       the whole answer is slow)
    /flaky/<n>/...     500 for the first n requests to this exact path, then 200

Every request is recorded (path, headers, body, time) before the answer is decided,
so a test sees attempts whose answer never reached the gateway too.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    base_url: str
    hang_seconds: float = 30.0
    slow_seconds: float = 1.0
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counts: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def to(self, path: str) -> list[Received]:
        """Requests to one path (query strings included in the path)."""
        with self._lock:
            return [r for r in self.requests if r.path == "/" + path.lstrip("/")]

    def wait_for(self, path: str, count: int = 1, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.to(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.to(path))} requests, wanted {count}")

    def _record(self, request: Received) -> int:
        with self._lock:
            self.requests.append(request)
            self._counts[request.path] = self._counts.get(request.path, 0) + 1
            return self._counts[request.path]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            seen = receiver._record(
                Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
            )
            parts = self.path.strip("/").split("/")
            kind = parts[0]
            if kind == "hang":
                time.sleep(receiver.hang_seconds)
                self.close_connection = True
                return
            if kind == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if kind == "slow":
                time.sleep(receiver.slow_seconds)
            if kind == "trickle":
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.3)
                self.close_connection = True
                return
            status = 200
            if kind == "status":
                status = int(parts[1])
            elif kind == "flaky":
                status = 500 if seen <= int(parts[1]) else 200
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", receiver.url("/ok/redirected"))
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    return Handler


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: when many attempts connect at once the
    # kernel drops the SYNs beyond it and the client sends them again only after a
    # second, as long as a test worker's timeout.
    request_queue_size = 256
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Answering a worker that was killed meanwhile fails, as it should: no noise.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def running_receiver(**options: float) -> Iterator[Receiver]:
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}")
    receiver.hang_seconds = options.get("hang_seconds", receiver.hang_seconds)
    receiver.slow_seconds = options.get("slow_seconds", receiver.slow_seconds)
    server = _Server(("127.0.0.1", port), _handler(receiver))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
