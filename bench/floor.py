"""The floor: the unavoidable work of one card payment, and nothing else.

A plain ASGI app (no framework) whose every POST takes a cryptopay body, decrypts its
``cryptogram`` with RSA PKCS#1 v1.5 and the gateway's own private key (as
tolem.payments.cryptogram does), and stores the payment with one durable INSERT in its
own transaction, then answers a small JSON. No token, no validation, no logging.

The work runs inline on the event loop, one payment at a time per worker: the cheapest
way to do it. (A thread pool, as tolem uses, measured slower on SQLite, with long tails
from writers waiting on each other's locks, and no faster on a local PostgreSQL.)
SQLite: WAL mode, ``synchronous`` as tolem's default (``NORMAL``), ``BEGIN IMMEDIATE``,
a busy timeout; PostgreSQL: psycopg, default ``synchronous_commit`` (on).

Served by uvicorn with the same worker count as tolem (bench/run.py starts it)::

    FLOOR_KEY=<data_dir>/keys/rsa-private.pem FLOOR_DATABASE=sqlite:////tmp/floor.db \\
        python -m uvicorn floor:app --app-dir bench --workers 2 --no-access-log

Configuration (environment): ``FLOOR_KEY`` (PEM of the RSA private key),
``FLOOR_DATABASE`` (``sqlite:///<path>`` or a ``postgresql://`` URL),
``FLOOR_SQLITE_SYNCHRONOUS`` (default ``NORMAL``).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS floor_payments ("
    " id VARCHAR(36) PRIMARY KEY,"
    " invoice_id VARCHAR(15) NOT NULL UNIQUE,"
    " amount VARCHAR(20) NOT NULL,"
    " card_mask VARCHAR(19) NOT NULL,"
    " status VARCHAR(10) NOT NULL)"
)
INSERT_SQLITE = "INSERT INTO floor_payments VALUES (?, ?, ?, ?, ?)"
INSERT_PG = "INSERT INTO floor_payments VALUES (%s, %s, %s, %s, %s)"


def create_schema(database: str) -> None:
    """The floor's one table (run once, before the workers start)."""
    if database.startswith("sqlite:///"):
        conn = sqlite3.connect(database.removeprefix("sqlite:///"))
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(SCHEMA)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(database, autocommit=True) as pg:
        pg.execute(SCHEMA)


def _load_key() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(Path(os.environ["FLOOR_KEY"]).read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


class _Store:
    """One connection per worker process; one transaction per payment."""

    def __init__(self, database: str, synchronous: str) -> None:
        self.database = database
        self.synchronous = synchronous
        self.conn: Any = None

    def insert(self, row: tuple[str, str, str, str, str]) -> None:
        if self.conn is None:
            self.conn = self._connect()
        conn = self.conn
        if isinstance(conn, sqlite3.Connection):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(INSERT_SQLITE, row)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        with conn.transaction():
            conn.execute(INSERT_PG, row)

    def _connect(self) -> Any:
        if self.database.startswith("sqlite:///"):
            conn = sqlite3.connect(
                self.database.removeprefix("sqlite:///"),
                isolation_level=None,
                check_same_thread=False,
                timeout=30,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn
        import psycopg

        return psycopg.connect(self.database, autocommit=True)


class Floor:
    def __init__(self) -> None:
        self.key = _load_key()
        self.store = _Store(
            os.environ["FLOOR_DATABASE"], os.environ.get("FLOOR_SQLITE_SYNCHRONOUS", "NORMAL")
        )

    def pay(self, raw: bytes) -> bytes:
        body = json.loads(raw)
        plain = self.key.decrypt(base64.b64decode(body["cryptogram"]), padding.PKCS1v15())
        card = json.loads(plain)
        pan = str(card["hpan"])
        tx_id = str(uuid.uuid4())
        mask = pan[:6] + "******" + pan[-4:]
        self.store.insert((tx_id, str(body["invoiceId"]), str(body["amount"]), mask, "AUTH"))
        return json.dumps({"id": tx_id, "status": "AUTH", "cardMask": mask}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["method"] == "POST":
            try:
                answer = self.pay(b"".join(chunks))
                status = 200
            except Exception as exc:  # the benchmark counts it; the text says why
                answer, status = f"{type(exc).__name__}: {exc}".encode(), 500
        else:
            answer, status = b"floor", 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})


_app: Floor | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point; the key and store are made on first use, in each worker."""
    global _app
    if _app is None:
        _app = Floor()
    await _app(scope, receive, send)
