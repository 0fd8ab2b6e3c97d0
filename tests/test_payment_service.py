"""The payment service's steps, on a real database without HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from tolem.db.engine import Database
from tolem.db.migrate import prepare_database
from tolem.merchants.service import SANDBOX_TERMINAL_ID
from tolem.payments.models import Transaction
from tolem.payments.service import finish
from tolem.processor.base import ProcessorResult

APPROVED = ProcessorResult(True, 0, "504355533594", "178644", "INTREF", "JSC Halyk Bank")
DECLINED = ProcessorResult(False, 484)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 't.db'}")
    prepare_database(database, sandbox=True)
    return database


def _new(db: Database) -> Transaction:
    from decimal import Decimal

    from tolem.merchants.service import find_by_client_id

    with db.write() as session:
        merchant = find_by_client_id(session, "test")
        assert merchant is not None
        tx = Transaction(
            merchant_id=merchant.id,
            terminal_id=SANDBOX_TERMINAL_ID,
            invoice_id="000000777",
            invoice_claim="000777",
            amount=Decimal("100.00"),
            currency="KZT",
        )
        session.add(tx)
    return tx


def test_first_finish_stands_when_two_race(db: Database) -> None:
    tx = _new(db)
    with db.write() as session:
        first = finish(session, tx, APPROVED, capture=False)
    assert (first.status, first.reference) == ("AUTH", "504355533594")
    with db.write() as session:
        again = finish(session, _new_copy(db, tx.id), DECLINED, capture=False)
    assert (again.status, again.reason_code, again.reference) == ("AUTH", 0, "504355533594")
    with db.read() as session:
        stored = session.get(Transaction, tx.id)
        assert stored is not None and stored.invoice_claim == "000777"  # still held


def _new_copy(db: Database, tx_id: str) -> Transaction:
    with db.read() as session:
        tx = session.get(Transaction, tx_id)
        assert tx is not None
        return tx


def test_decline_releases_the_invoice(db: Database) -> None:
    tx = _new(db)
    with db.write() as session:
        declined = finish(session, tx, DECLINED, capture=False)
    assert (declined.status, declined.reason_code) == ("FAILED", 484)
    with db.read() as session:
        stored = session.get(Transaction, tx.id)
        assert stored is not None and stored.invoice_claim is None
