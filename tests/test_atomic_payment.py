"""A payment on a test terminal is one transaction: claim, simulator ledger, outcome.

The database itself refuses the simulator's ledger row (a trigger), as a full disk or a
lost connection would in the middle of a payment: nothing of the payment may remain,
not a NEW transaction holding its invoice, not a history line, not a postLink. Once
the ledger accepts rows again, the same invoice pays.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from tolem.config import Settings
from tolem.db.migrate import prepare_database
from tolem.merchants.models import Terminal
from tolem.merchants.service import SANDBOX_TERMINAL_ID, find_by_client_id
from tolem.notifications.models import Notification
from tolem.oauth.tokens import AccessToken
from tolem.payments import service
from tolem.payments.models import Transaction, TransactionEvent
from tolem.processor.base import Card, ProcessorResult
from tolem.processor.simulator import LedgerEntry
from tolem.runtime import Runtime

CARD = Card(pan="4405639704015096", exp_month=1, exp_year=2025, cvc="815")  # a published test card

SQLITE_TRIGGER = [
    "CREATE TRIGGER ledger_down BEFORE INSERT ON simulator_ledger"
    " BEGIN SELECT RAISE(ABORT, 'ledger down'); END"
]
PG_TRIGGER = [
    "CREATE FUNCTION ledger_down() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN RAISE EXCEPTION 'ledger down'; END $$",
    "CREATE TRIGGER ledger_down BEFORE INSERT ON simulator_ledger"
    " FOR EACH ROW EXECUTE FUNCTION ledger_down()",
]


@pytest.fixture
def rt(postgres_or_sqlite_empty_url: str, tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime.start(Settings(data_dir=tmp_path, database_url=postgres_or_sqlite_empty_url))
    prepare_database(runtime.db, sandbox=True)
    yield runtime
    runtime.close()


def _context(rt: Runtime, invoice: str) -> service.PaymentContext:
    with rt.db.read() as session:
        merchant = find_by_client_id(session, "test")
        assert merchant is not None
    token = AccessToken(
        merchant_id=merchant.id,
        terminal_id=SANDBOX_TERMINAL_ID,
        scope="payment",
        invoice_id=invoice,
        amount=Decimal("100.00"),
        currency="KZT",
        post_link="http://127.0.0.1:9/post",
        failure_post_link="",
        secret_hash="",
        expires_at=2**31,
    )
    return service.PaymentContext(token=token, ip="127.0.0.1")


def _order(invoice: str) -> service.PaymentOrder:
    return service.PaymentOrder(
        amount=Decimal("100.00"),
        currency="KZT",
        name="JON JONSON",
        invoice_id=invoice,
        description="atomic",
        post_link="http://127.0.0.1:9/post",
    )


def _counts(rt: Runtime, invoice: str) -> tuple[int, int, int, int]:
    with rt.db.read() as session:
        ids = select(Transaction.id).where(Transaction.invoice_id == invoice)
        return (
            session.scalar(select(func.count()).select_from(ids.subquery())) or 0,
            session.scalar(select(func.count()).where(TransactionEvent.transaction_id.in_(ids)))
            or 0,
            session.scalar(select(func.count()).where(LedgerEntry.reference.in_(ids))) or 0,
            session.scalar(select(func.count()).where(Notification.transaction_id.in_(ids))) or 0,
        )


def test_a_payment_that_fails_midway_leaves_nothing_and_its_invoice_free(rt: Runtime) -> None:
    invoice = f"{secrets.randbelow(10**9):09d}"
    ctx, order = _context(rt, invoice), _order(invoice)
    with rt.db.write() as session:
        for statement in SQLITE_TRIGGER if rt.db.is_sqlite else PG_TRIGGER:
            session.execute(text(statement))

    with pytest.raises(DBAPIError, match="ledger down"):
        service.pay(rt, ctx, order, CARD, SANDBOX_TERMINAL_ID)
    assert _counts(rt, invoice) == (0, 0, 0, 0)  # no NEW payment, history, ledger, postLink

    with rt.db.write() as session:
        session.execute(
            text("DROP TRIGGER ledger_down" + ("" if rt.db.is_sqlite else " ON simulator_ledger"))
        )
    tx, challenge = service.pay(rt, ctx, order, CARD, SANDBOX_TERMINAL_ID)
    assert challenge is None and tx.status == "AUTH" and tx.invoice_id == invoice
    # the claim, its outcome (two history lines), the ledger row and the postLink
    assert _counts(rt, invoice) == (1, 2, 1, 1)


class _OffTheLoop:
    """A connector that approves, and notes the threads it was called on."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def authorize(self, request: object) -> ProcessorResult:
        self.threads.append(threading.current_thread())
        return ProcessorResult(approved=True, reason_code=0, rrn="123456789012")


def _live_terminal(rt: Runtime) -> None:
    with rt.db.write() as session:
        session.execute(
            update(Terminal).where(Terminal.id == SANDBOX_TERMINAL_ID).values(is_test=False)
        )
    rt.db.directory.forget()


def _pay_on_the_loop(rt: Runtime, invoice: str) -> tuple[Transaction, object, threading.Thread]:
    async def on_the_loop() -> tuple[Transaction, object, threading.Thread]:
        ctx, order = _context(rt, invoice), _order(invoice)
        tx, challenge = await service.pay_on_the_loop(rt, ctx, order, CARD, SANDBOX_TERMINAL_ID)
        return tx, challenge, threading.current_thread()

    return asyncio.run(on_the_loop())


def _counting_claims(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    claims: list[str] = []
    claim = service.claim

    def counted(*args: object, **kwargs: object) -> object:
        claims.append(threading.current_thread().name)
        return claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "claim", counted)
    return claims


def test_a_gateway_with_a_connector_pays_in_a_thread_claiming_once(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pay_on_the_loop never calls a connector on the loop: with one configured, the
    payment goes to a thread at once (not claimed on the loop, undone, claimed again)."""
    invoice = f"{secrets.randbelow(10**9):09d}"
    connector = _OffTheLoop()
    rt.acquirer = connector  # type: ignore[assignment]
    _live_terminal(rt)
    claims = _counting_claims(monkeypatch)
    tx, challenge, loop_thread = _pay_on_the_loop(rt, invoice)
    assert challenge is None and tx.status == "AUTH"
    assert len(connector.threads) == 1 and connector.threads[0] is not loop_thread
    assert len(claims) == 1 and claims[0] != loop_thread.name
    assert _counts(rt, invoice) == (1, 2, 0, 1)


def test_a_terminal_that_turns_out_to_need_a_connector_gives_way_on_the_loop(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: a terminal whose acquirer is found to be a connector only in the
    claim made on the loop has that claim undone, and the payment is made in a thread."""
    invoice = f"{secrets.randbelow(10**9):09d}"
    connector = _OffTheLoop()
    assert rt.acquirer is None
    monkeypatch.setattr(rt, "acquirer_for", lambda terminal: connector)
    _live_terminal(rt)
    claims = _counting_claims(monkeypatch)
    tx, challenge, loop_thread = _pay_on_the_loop(rt, invoice)
    assert challenge is None and tx.status == "AUTH"
    assert len(connector.threads) == 1 and connector.threads[0] is not loop_thread
    assert len(claims) == 2 and claims[0] == loop_thread.name != claims[1]
    # One payment: the claim made on the loop left nothing (its invoice was free again).
    assert _counts(rt, invoice) == (1, 2, 0, 1)
