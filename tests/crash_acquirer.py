"""An external acquirer for the recovery and crash tests.

``TOLEM_ACQUIRER=tests.crash_acquirer:create`` loads it for non-test terminals.

It stands for a bank's processing outside tolem: its ledger is its own SQLite file
(``TOLEM_TEST_ACQUIRER_LEDGER``), not tolem's database, so what it has done survives
whatever happens to the gateway. Like the simulator it is idempotent by reference: a
repeated call returns the first answer and moves no money twice. Beside the ledger it
counts every call it receives (table ``calls``), so a test can prove that recovery asked
(``inquire``) and never sent a payment or a refund again.

Decisions: a payment is approved unless its amount's whole part ends in 7 (484,
insufficient funds); a capture, void or refund is approved when its payment's
authorization was, and a refund only while the refunds stay within the charge.
``TOLEM_TEST_ACQUIRER_PAUSE`` (seconds) makes each call sleep up to that long before
and after it records, so that a process killed at random often dies mid-call.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

from tolem.processor.base import AuthenticationRefused, AuthorizationRequest, ProcessorResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    reference TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    auth_reference TEXT NOT NULL,
    amount TEXT NOT NULL,
    approved INTEGER NOT NULL,
    reason_code INTEGER NOT NULL,
    rrn TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL,
    reference TEXT NOT NULL
);
"""


class LedgerAcquirer:
    """An :class:`~tolem.processor.base.Acquirer` with a durable ledger of its own."""

    #: The longest one call takes (pauses included): the recovery sweep's grace follows.
    max_call_seconds = 1.0

    def __init__(self, path: Path, pause: float = 0.0) -> None:
        self.path = path
        self.pause = pause
        with closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _nap(self) -> None:
        if self.pause:
            time.sleep(random.uniform(0, self.pause))

    def _call(self, method: str, reference: str) -> None:
        with closing(self._connect()) as conn:
            conn.execute("INSERT INTO calls (method, reference) VALUES (?, ?)", (method, reference))

    def _record(
        self, reference: str, kind: str, auth_reference: str, amount: Decimal, code: int
    ) -> ProcessorResult:
        """Keep the answer under its reference, or return the one kept first."""
        self._nap()
        rrn = f"{random.randrange(10**12):012d}" if code == 0 else ""
        with closing(self._connect()) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
                (reference, kind, auth_reference, str(amount), int(code == 0), code, rrn),
            )
        self._nap()
        found = self.inquire(reference)
        assert found is not None
        return found

    def _row(self, reference: str) -> tuple[Any, ...] | None:
        with closing(self._connect()) as conn:
            row: tuple[Any, ...] | None = conn.execute(
                "SELECT kind, auth_reference, amount, approved, reason_code, rrn"
                " FROM ledger WHERE reference = ?",
                (reference,),
            ).fetchone()
        return row

    # --- the Acquirer interface -------------------------------------------------------

    def authorize(self, request: AuthorizationRequest) -> ProcessorResult:
        self._call("authorize", request.reference)
        code = 484 if int(request.amount) % 10 == 7 else 0
        kind = "verify" if request.verify else "sale" if request.capture else "authorize"
        return self._record(request.reference, kind, "", request.amount, code)

    def capture(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult:
        self._call("capture", reference)
        return self._operation(reference, "capture", auth_reference, amount)

    def void(self, reference: str, auth_reference: str) -> ProcessorResult:
        self._call("void", reference)
        return self._operation(reference, "void", auth_reference, Decimal("0.00"))

    def refund(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult:
        self._call("refund", reference)
        return self._operation(reference, "refund", auth_reference, amount)

    def complete_authentication(self, reference: str, pa_res: str, md: str) -> ProcessorResult:
        raise AuthenticationRefused(473, "this acquirer never asks for 3-D Secure")

    def inquire(self, reference: str) -> ProcessorResult | None:
        row = self._row(reference)
        if row is None:
            return None
        _kind, _auth, _amount, approved, code, rrn = row
        return ProcessorResult(
            approved=bool(approved),
            reason_code=int(code),
            rrn=rrn,
            approval_code="123456" if approved else "",
            issuer="Crash Test Bank",
        )

    def _operation(
        self, reference: str, kind: str, auth_reference: str, amount: Decimal
    ) -> ProcessorResult:
        auth = self._row(auth_reference)
        code = 0 if auth is not None and auth[3] else 522
        if code == 0 and kind == "refund":
            refunded = self.refunded(auth_reference, excluding=reference)
            code = 0 if refunded + amount <= Decimal(auth[2]) else 470
        return self._record(reference, kind, auth_reference, amount, code)

    # --- what the tests read ----------------------------------------------------------

    def refunded(self, auth_reference: str, *, excluding: str = "") -> Decimal:
        with closing(self._connect()) as conn:
            amounts = conn.execute(
                "SELECT amount FROM ledger WHERE auth_reference = ? AND kind = 'refund'"
                " AND approved = 1 AND reference != ?",
                (auth_reference, excluding),
            ).fetchall()
        return sum((Decimal(a) for (a,) in amounts), Decimal(0))

    def rows(self) -> list[tuple[Any, ...]]:
        """(reference, kind, auth_reference, amount, approved, reason_code, rrn) of each."""
        with closing(self._connect()) as conn:
            return list(conn.execute("SELECT * FROM ledger"))

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        """(method, reference) of every call received, in order."""
        with closing(self._connect()) as conn:
            found = conn.execute("SELECT method, reference FROM calls ORDER BY id").fetchall()
        return [(m, r) for m, r in found if method is None or m == method]


def create(settings: object, db: object) -> LedgerAcquirer:
    """The factory TOLEM_ACQUIRER names: the ledger file and pause from the environment."""
    return LedgerAcquirer(
        Path(os.environ["TOLEM_TEST_ACQUIRER_LEDGER"]),
        pause=float(os.environ.get("TOLEM_TEST_ACQUIRER_PAUSE", "0")),
    )
