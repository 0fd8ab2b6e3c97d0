"""A tolem gateway for a shop's own tests, and a recorder of the postLinks it sends.

The pytest plugin (:mod:`tolem.pytest_plugin`, loaded automatically once tolem is
installed) wraps these in the ``tolem_gateway`` fixture; other test runners can use
:func:`running_gateway` directly::

    with running_gateway(tmp_dir) as gateway:
        payment = gateway.client.pay(order, card)
        postlink = gateway.postlinks.wait(order.invoice_id)

The gateway is a real ``tolem serve`` process in sandbox mode on 127.0.0.1, with its own
SQLite database (or the URL you give) and a delivery worker, so postLinks really arrive.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Unpack

import httpx

from tolem import sandbox
from tolem.client import (
    AsyncEpayClient,
    ClientOptions,
    EpayClient,
    PostLink,
    parse_postlink,
)

__all__ = [
    "SANDBOX_MERCHANT",
    "Gateway",
    "MerchantCredentials",
    "PostLinkRecorder",
    "RecordedPostLink",
    "free_port",
    "running_gateway",
]


@dataclass(frozen=True)
class MerchantCredentials:
    client_id: str
    client_secret: str
    terminal_id: str


#: ePay's public test merchant, which sandbox mode seeds (EPAY.md section 2).
SANDBOX_MERCHANT = MerchantCredentials(
    client_id=sandbox.CLIENT_ID,
    client_secret=sandbox.CLIENT_SECRET,
    terminal_id=sandbox.TERMINAL_ID,
)


@dataclass(frozen=True)
class RecordedPostLink:
    """One POST the recorder received: the raw request and, if it parses, the postLink."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def postlink(self) -> PostLink:
        return parse_postlink(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class PostLinkRecorder:
    """An HTTP server on 127.0.0.1 that answers 200 to every POST and keeps it.

    Give ``recorder.url`` (or ``recorder.url_for("failure")``) as postLink; then
    ``recorder.wait(invoice_id)`` returns the notifications of that invoice once they
    arrive. ``status_for[path] = 500`` makes one path fail, to test redelivery.
    """

    url: str
    received: list[RecordedPostLink] = field(default_factory=list)
    status_for: dict[str, int] = field(default_factory=dict)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    def record(self, item: RecordedPostLink) -> int:
        with self._changed:
            self.received.append(item)
            self._changed.notify_all()
            return self.status_for.get(item.path, 200)

    def clear(self) -> None:
        with self._changed:
            self.received.clear()

    def for_invoice(self, invoice_id: str) -> list[RecordedPostLink]:
        with self._changed:
            items = list(self.received)
        return [item for item in items if _invoice_of(item) == invoice_id]

    def wait(
        self, invoice_id: str, *, count: int = 1, timeout: float = 15.0
    ) -> list[RecordedPostLink]:
        """The first ``count`` postLinks of ``invoice_id``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [item for item in self.received if _invoice_of(item) == invoice_id]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({_invoice_of(item) for item in self.received})
                    raise AssertionError(
                        f"{len(found)} of {count} postLink(s) for invoice {invoice_id} arrived "
                        f"within {timeout} s (received for invoices: {seen or 'none'})"
                    )
                self._changed.wait(left)

    def wait_for(self, invoice_id: str, *, timeout: float = 15.0) -> PostLink:
        """The parsed postLink of ``invoice_id`` (the first one to arrive)."""
        return self.wait(invoice_id, timeout=timeout)[0].postlink


def _invoice_of(item: RecordedPostLink) -> str:
    try:
        data = json.loads(item.body)
    except ValueError:
        return ""
    return str(data.get("invoiceId", "")) if isinstance(data, dict) else ""


class _Handler(BaseHTTPRequestHandler):
    server: _RecorderServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        item = RecordedPostLink(self.path, dict(self.headers.items()), body, time.time())
        status = self.server.recorder.record(item)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class _RecorderServer(ThreadingHTTPServer):
    daemon_threads = True
    recorder: PostLinkRecorder


@contextmanager
def recording_postlinks() -> Iterator[PostLinkRecorder]:
    server = _RecorderServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.recorder = PostLinkRecorder(url=f"http://127.0.0.1:{port}")
    thread = threading.Thread(target=server.serve_forever, name="tolem-postlinks", daemon=True)
    thread.start()
    try:
        yield server.recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Gateway:
    """A running tolem gateway: its address, a ready client and the test merchant."""

    url: str
    merchant: MerchantCredentials
    postlinks: PostLinkRecorder
    client: EpayClient
    data_dir: Path
    log_path: Path

    def new_client(self, **options: Unpack[ClientOptions]) -> EpayClient:
        """Another client for the test merchant (``timeout=``, ``retries=``, …)."""
        m = self.merchant
        return EpayClient(
            self.url,
            client_id=m.client_id,
            client_secret=m.client_secret,
            terminal_id=m.terminal_id,
            **options,
        )

    def async_client(self, **options: Unpack[ClientOptions]) -> AsyncEpayClient:
        """An AsyncEpayClient for the test merchant; close it with ``await c.aclose()``."""
        m = self.merchant
        return AsyncEpayClient(
            self.url,
            client_id=m.client_id,
            client_secret=m.client_secret,
            terminal_id=m.terminal_id,
            **options,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Settings the fixture's gateway runs with: quick delivery and quick retries.
GATEWAY_ENV = {
    "TOLEM_MODE": "sandbox",
    "TOLEM_POSTLINK_WORKER": "true",
    "TOLEM_POSTLINK_POLL_INTERVAL": "0.05",
    "TOLEM_POSTLINK_TIMEOUT": "5",
    "TOLEM_POSTLINK_RETRY_SCHEDULE": "1,2,5,10",
    "TOLEM_ACCESS_LOG": "false",
}


@contextmanager
def running_gateway(
    data_dir: Path,
    *,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[Gateway]:
    """Start ``tolem serve`` (sandbox) on a free 127.0.0.1 port with a postLink recorder.

    Settings from your own ``TOLEM_*`` environment are not inherited (a stray
    ``TOLEM_MODE=production`` must not reach a test gateway); pass ``env`` to set some.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TOLEM_")}
    child_env = {
        **inherited,
        **GATEWAY_ENV,
        "TOLEM_DATA_DIR": str(data_dir),
        "TOLEM_DATABASE_URL": database_url or "",
        **(env or {}),
    }
    log_path = data_dir / "tolem-serve.log"
    with recording_postlinks() as recorder, open(log_path, "wb") as log:
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            [sys.executable, "-m", "tolem", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, process, log_path, startup_timeout)
            m = SANDBOX_MERCHANT
            with EpayClient(
                url, client_id=m.client_id, client_secret=m.client_secret, terminal_id=m.terminal_id
            ) as client:
                yield Gateway(url, m, recorder, client, data_dir, log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until the `tolem serve` at ``url`` answers; fail with its log if it exits or
    does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tolem serve exited ({process.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/public.rsa", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"tolem serve did not answer within {timeout} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
