"""``Idempotency-Key`` on POST requests (beyond ePay).

A client that sends ``Idempotency-Key: <key>`` with a POST gets one execution per key:

- the same key with the same request (method, path, query and body) again replays
  the first answer (with ``Idempotent-Replayed: true``);
- the same key with another request is refused, HTTP 422;
- the same key while the first request still runs is refused, HTTP 409;
- keys are scoped to the merchant of the request's bearer token and kept 24 hours.

A request without a bearer token that opens (the token endpoint, the pages) is served
as if it had no key. An answer of 5xx is not kept, so a retry runs again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from sqlalchemy import String, Text, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tolem import wire
from tolem.db.base import Base, UTCDateTime, utcnow
from tolem.oauth.tokens import TokenInvalid
from tolem.runtime import Runtime

KEEP = timedelta(hours=24)
MAX_KEY = 255


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    merchant_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(8), default="running")  # running, done
    status_code: Mapped[int | None] = mapped_column()
    content_type: Mapped[str] = mapped_column(String(100), default="")
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Idempotency:
    """ASGI middleware; the runtime is read from the app's state at request time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        # Most POSTs carry no key: look for it before opening the token (the endpoint
        # opens it anyway), so the payment path pays nothing for this middleware.
        raw_key = next((v for k, v in scope["headers"] if k.lower() == b"idempotency-key"), b"")
        key = raw_key.decode("latin-1").strip()
        if not key:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        owner = self._owner(scope, headers.get("authorization", ""))
        if owner is None:
            await self.app(scope, receive, send)
            return
        merchant_id, scope_of = owner
        if len(key) > MAX_KEY or not key.isprintable() or not key.isascii():
            await _answer(
                send,
                400,
                {"code": 100, "message": "Idempotency-Key: 1 to 255 printable ASCII characters"},
            )
            return
        body = await _read_body(receive)
        if body is None:
            return
        digest = hashlib.sha256(
            b"\n".join(
                [
                    scope["method"].encode(),
                    scope["path"].encode(),
                    scope.get("query_string", b""),
                    scope_of.encode(),  # another terminal's or order's token: another request
                    body,
                ]
            )
        ).hexdigest()
        rt: Runtime = scope["app"].state.runtime
        verdict = await run_in_threadpool(_begin, rt, merchant_id, key, digest)
        if isinstance(verdict, IdempotencyKey):
            await _replay(send, verdict)
            return
        if verdict == "conflict":
            await _answer(
                send,
                409,
                {"code": 100, "message": "a request with this Idempotency-Key is still running"},
            )
            return
        if verdict == "mismatch":
            await _answer(
                send,
                422,
                {"code": 100, "message": "this Idempotency-Key was used with another request"},
            )
            return
        captured = _Captured()

        async def replay_body() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured.status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        captured.content_type = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                captured.body += bytes(message.get("body", b""))
                if not message.get("more_body", False):
                    # Kept before the client has the whole answer: a retry it sends
                    # right after gets the replay, not "still running".
                    await run_in_threadpool(_finish, rt, merchant_id, key, captured)
                    captured.kept = True
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        finally:
            if not captured.kept:  # the app failed before answering: free the key
                captured.status = 500
                with anyio.CancelScope(shield=True):  # even when the request is cancelled
                    await run_in_threadpool(_finish, rt, merchant_id, key, captured)

    @staticmethod
    def _owner(scope: Scope, authorization: str) -> tuple[str, str] | None:
        """The token's merchant, and what else it binds (terminal, invoice)."""
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        rt = getattr(scope["app"].state, "runtime", None)
        if rt is None:
            return None
        try:
            token = rt.sealer.open(value.strip())
        except TokenInvalid:
            return None
        if token.expired():
            return None
        return str(token.merchant_id), f"{token.terminal_id}|{token.invoice_id}"


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None if the client went away before sending all of it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect: a cut-off request must not run
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _begin(rt: Runtime, merchant_id: str, key: str, digest: str) -> IdempotencyKey | str:
    """Take the key; or the stored answer, "conflict" (running) or "mismatch"."""
    now = utcnow()
    for _ in range(2):
        try:
            with rt.db.write() as session:
                existing = session.get(IdempotencyKey, (merchant_id, key))
                if existing is not None and existing.created_at <= now - KEEP:
                    session.delete(existing)  # expired: the key is free again
                    session.flush()
                    existing = None
                if existing is None:
                    session.add(
                        IdempotencyKey(
                            merchant_id=merchant_id, key=key, request_hash=digest, created_at=now
                        )
                    )
                    return "run"
                if existing.request_hash != digest:
                    return "mismatch"
                if existing.state != "done":
                    return "conflict"
                return existing
        except IntegrityError:  # a twin took the key between our read and insert
            continue
    return "conflict"


@dataclass
class _Captured:
    """The answer as it went out, to be kept for replays."""

    status: int = 500
    content_type: str = ""
    body: bytes = b""
    kept: bool = False


def _finish(rt: Runtime, merchant_id: str, key: str, captured: _Captured) -> None:
    status = captured.status
    with rt.db.write() as session:
        row = session.get(IdempotencyKey, (merchant_id, key))
        if row is None:
            return
        if status >= 500:  # not an answer to keep: let a retry run again
            session.delete(row)
            return
        row.state = "done"
        row.status_code = status
        row.content_type = captured.content_type[:100]
        row.body = captured.body.decode("utf-8", "replace")


def sweep(rt: Runtime) -> int:
    """Forget keys older than 24 hours; how many."""
    with rt.db.write() as session:
        done = session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at <= utcnow() - KEEP)
        )
        return int(done.rowcount)  # type: ignore[attr-defined]


async def _replay(send: Send, row: IdempotencyKey) -> None:
    body = row.body.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": row.status_code or 200,
            "headers": [
                (b"content-type", (row.content_type or "application/json").encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
                (b"idempotent-replayed", b"true"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _answer(send: Send, status: int, content: dict[str, object]) -> None:
    await wire.send_json(send, status, content)
