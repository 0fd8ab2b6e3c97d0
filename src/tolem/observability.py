"""Request ids, access lines, HTTP metrics, /metrics, /healthz and /readyz.

``RequestContext`` is plain ASGI middleware, the outermost of the gateway's own: it gives
each request an id (a sane ``X-Request-ID`` from the client, or a new one), echoes it in
the answer (a 500 gets it from ``tolem.errors``' handler: Starlette sends that one from
outside this middleware), sets it in ``tolem.logs.request_id`` for every record logged
while the request is handled, writes the access line at the end (with the duration),
and counts the request by method, route template and status.

What the metrics are, and why the payment and postLink figures are read from the
database at scrape time, is in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tolem.logs import redact, request_id

access_log = logging.getLogger("tolem.access")
log = logging.getLogger("tolem.observability")

#: Upper bounds (seconds) of the latency histogram's buckets; +Inf is implied.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The route label of a request no route matched (a 404): raw paths would make the
#: label's values unbounded.
UNMATCHED = "unmatched"
#: The route label of a request answered before the router saw it: a CORS preflight, a
#: body over the limit, an Idempotency-Key replay.
UNROUTED = "unrouted"
_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
_MAX_ID = 64


def _incoming_id(value: bytes) -> str | None:
    """A client's X-Request-ID if it is short and plain (letters, digits, ``-_.:``) and
    does not hold a card number."""
    if 0 < len(value) <= _MAX_ID and _ID_CHARS.issuperset(value):
        text = value.decode("ascii")
        return text if redact(text) == text else None
    return None


class HttpMetrics:
    """Requests and their latency by (method, route, status), in this process.

    One list per key: [count, sum of seconds, bucket counts...]. With several workers,
    each writes its figures to ``<dir>/<pid>.json`` every second and the worker that
    answers a scrape adds up every file (see ``SharedFigures``).
    """

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, int], list[float]] = {}
        self.changed = False

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        cell = self.series.get(key)
        if cell is None:
            cell = self.series[key] = [0.0] * (2 + len(BUCKETS) + 1)
        cell[0] += 1
        cell[1] += seconds
        cell[2 + bisect_left(BUCKETS, seconds)] += 1
        self.changed = True

    def dump(self) -> list[list[Any]]:
        return [[*key, *cell] for key, cell in self.series.items()]


class SharedFigures:
    """Several worker processes' HTTP figures, through small files in one directory.

    The directory is per ``tolem serve`` run (named after uvicorn's master process);
    a dead worker's file stays, so the sums never go down while the server runs.
    Directories of servers that are gone are removed when a worker starts.
    """

    def __init__(self, root: Path) -> None:
        self.directory = root / str(os.getppid())
        self.path = self.directory / f"{os.getpid()}.json"

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Another worker may be removing the same directories: whatever fails, it did.
        with contextlib.suppress(OSError):
            for old in self.directory.parent.iterdir():
                if old != self.directory and old.name.isdigit() and not _alive(int(old.name)):
                    for item in old.glob("*.json*"):
                        item.unlink(missing_ok=True)
                    old.rmdir()

    def write(self, metrics: HttpMetrics) -> None:
        metrics.changed = False
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(metrics.dump()))
        temporary.replace(self.path)

    def others(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for item in self.directory.glob("*.json"):
            if item == self.path:
                continue
            with contextlib.suppress(OSError, ValueError):
                rows.extend(json.loads(item.read_text()))
        return rows


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RequestContext:
    """Request id, access line and HTTP metrics for every request (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        access: bool = True,
        structured: bool = False,
        shared: SharedFigures | None = None,
    ) -> None:
        self.app = app
        self.structured = structured  # JSON logs: the access line's fields one by one
        self.metrics = metrics
        self.access = access
        self.shared = shared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.shared is not None:
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = _incoming_id(value)
                break
        if rid is None:
            rid = secrets.token_hex(8)
        # Left set when the request ends: the task is the request's own, and uvicorn's
        # record of an unhandled error, logged after the app returns, still carries it.
        request_id.set(rid)
        header = (b"x-request-id", rid.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or (UNMATCHED if status == 404 else UNROUTED)
            method = scope["method"]
            self.metrics.observe(method, template, status, seconds)
            if self.access and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                path = scope["path"]
                query = scope["query_string"]
                target = f"{path}?{query.decode('latin-1')}" if query else path
                access_log.info(
                    '%s - "%s %s HTTP/%s" %d %.1fms',
                    f"{client[0]}:{client[1]}" if client else "",
                    method,
                    target,
                    scope["http_version"],
                    status,
                    seconds * 1000,
                    # One attribute, not five: each extra attribute costs the record time.
                    extra={
                        "fields": {
                            "method": method,
                            "path": target,
                            "route": template,
                            "status": status,
                            "duration_ms": round(seconds * 1000, 3),
                        }
                    }
                    if self.structured
                    else None,
                )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        shared = self.shared
        assert shared is not None
        task: asyncio.Task[None] | None = None

        async def watched() -> Message:
            nonlocal task
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    shared.prepare()
                    task = asyncio.create_task(self._share(shared))
                except OSError as exc:
                    log.warning("metrics of several workers cannot be shared: %s", exc)
            elif message["type"] == "lifespan.shutdown" and task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                with contextlib.suppress(OSError):
                    shared.write(self.metrics)
            return message

        await self.app(scope, watched, send)

    async def _share(self, shared: SharedFigures) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.metrics.changed:
                try:
                    shared.write(self.metrics)
                except OSError as exc:
                    log.warning("could not write this worker's metrics: %s", exc)


def constant_time_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
