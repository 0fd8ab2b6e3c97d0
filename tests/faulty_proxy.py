"""A real, misbehaving HTTP proxy on 127.0.0.1 in front of a gateway, for client tests.

Every request is forwarded to the gateway unless a fault is queued for its path:

    proxy.fail("/payment/cryptopay", 503, times=2)   # answer 503 twice, then forward
    proxy.fail("/payment/cryptopay", DROP)           # forward, then close without an answer
    proxy.fail("/check-status/", HANG)                # never answer (until the proxy stops)
    proxy.fail("/oauth2/token", HTML)                 # 200 with an HTML page
    proxy.fail("/operation/", FORWARD_THEN_504)       # forward, then answer 504 itself

A fault's path matches a request whose path (without the query) starts with it; faults
are used up in the order they were queued. Every request is recorded (method, path,
headers, body), with what the proxy did and, when it reached the gateway, the
gateway's answer (status and headers, ``idempotent-replayed`` among them) whether or
not that answer was relayed.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support import free_port

#: Forward the request, then close the connection without relaying the answer.
DROP = "drop"
#: Read the request and answer nothing until the proxy stops.
HANG = "hang"
#: Answer 200 with an HTML page instead of JSON.
HTML = "html"
#: Forward the request, then answer 504 instead of the gateway's answer (a load
#: balancer that stopped waiting).
FORWARD_THEN_504 = "forward-504"
#: Forward the request and relay the answer (what happens without a fault).
FORWARD = "forward"

Action = str | int

#: Headers that belong to one connection, not to the request or answer.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}
HTML_PAGE = b"<!doctype html><html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"


@dataclass
class Seen:
    """One request the proxy received and what became of it."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]  # names in lower case
    body: bytes
    action: Action
    #: The gateway's answer, when the request reached it (FORWARD and DROP).
    upstream_status: int | None = None
    upstream_headers: dict[str, str] = field(default_factory=dict)

    @property
    def replayed(self) -> bool:
        """The gateway answered this one from its idempotency store."""
        return self.upstream_headers.get("idempotent-replayed") == "true"


@dataclass
class _Fault:
    action: Action
    retry_after: int | None


class FaultyProxy:
    def __init__(self, base_url: str, upstream: str) -> None:
        self.base_url = base_url
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._faults: list[tuple[str, _Fault]] = []
        self._seen: list[Seen] = []

    def fail(
        self, path: str, action: Action, *, times: int = 1, retry_after: int | None = None
    ) -> None:
        """Queue ``action`` for the next ``times`` requests whose path starts with ``path``.
        An int answers that HTTP status (JSON body), with Retry-After if given."""
        with self._lock:
            self._faults.extend((path, _Fault(action, retry_after)) for _ in range(times))

    def seen(self, path: str = "/") -> list[Seen]:
        """Requests whose path (without the query) starts with ``path``, oldest first."""
        with self._lock:
            return [s for s in self._seen if s.path.split("?")[0].startswith(path)]

    def pending(self) -> int:
        with self._lock:
            return len(self._faults)

    def _next_fault(self, path: str) -> _Fault:
        bare = path.split("?")[0]
        with self._lock:
            for index, (prefix, fault) in enumerate(self._faults):
                if bare.startswith(prefix):
                    del self._faults[index]
                    return fault
        return _Fault(FORWARD, None)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """The request sent to the gateway on a connection of its own; its raw answer."""
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
            sent["host"] = f"{self.upstream_host}:{self.upstream_port}"
            sent["content-length"] = str(len(body))
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()


def _handler(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response_only(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def _drop(self) -> None:
            self.close_connection = True
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _handle(self) -> None:
            body = self._body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            fault = proxy._next_fault(self.path)
            seen = Seen(self.command, self.path, headers, body, fault.action)
            proxy._record(seen)
            action = fault.action
            if isinstance(action, int):
                extra = [("Content-Type", "application/json")]
                if fault.retry_after is not None:
                    extra.append(("Retry-After", str(fault.retry_after)))
                message = {"code": 100, "message": f"injected HTTP {action}"}
                self._answer(action, extra, json.dumps(message).encode())
                return
            if action == HTML:
                self._answer(200, [("Content-Type", "text/html; charset=utf-8")], HTML_PAGE)
                return
            if action == HANG:
                proxy.released.wait(60)
                self._drop()
                return
            status, upstream_headers, answer = proxy.forward(self.command, self.path, headers, body)
            seen.upstream_status = status
            seen.upstream_headers = {k.lower(): v for k, v in upstream_headers}
            if action == DROP:
                self._drop()
                return
            if action == FORWARD_THEN_504:
                self._answer(504, [("Content-Type", "text/html")], HTML_PAGE)
                return
            self._answer(status, upstream_headers, answer)

        do_GET = _handle
        do_POST = _handle
        do_PUT = _handle
        do_DELETE = _handle

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 64
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a time-out) before its answer: expected, no noise.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def running_proxy(upstream: str) -> Iterator[FaultyProxy]:
    """A proxy on a free port of 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""
    port = free_port()
    proxy = FaultyProxy(f"http://127.0.0.1:{port}", upstream)
    server = _Server(("127.0.0.1", port), _handler(proxy))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
