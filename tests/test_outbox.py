"""The outbox's bookkeeping in one process: stale results, redelivery during an attempt,
and rows whose attempts never got recorded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tolem.db.base import utcnow
from tolem.db.engine import Database
from tolem.db.migrate import prepare_database
from tolem.merchants.service import SANDBOX_TERMINAL_ID, find_by_client_id
from tolem.notifications import service
from tolem.notifications.models import DeliveryAttempt, Notification
from tolem.payments.models import Transaction

SCHEDULE = (1.0, 2.0)
FAIL = service.AttemptResult(500, 5, "HTTP 500")
OK = service.AttemptResult(200, 5)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    prepare_database(database, sandbox=True)
    yield database
    database.dispose()


def _notification(db: Database) -> str:
    with db.write() as session:
        merchant = find_by_client_id(session, "test")
        assert merchant is not None
        tx = Transaction(
            merchant_id=merchant.id,
            terminal_id=SANDBOX_TERMINAL_ID,
            invoice_id="000000001",
            amount=Decimal("100.00"),
            currency="KZT",
            status="AUTH",
            post_link="http://127.0.0.1:9/ok",
        )
        session.add(tx)
        session.flush()
        notification = service.enqueue(session, tx)
        assert notification is not None
        session.flush()
        return notification.id


def _claim(db: Database, *, at_offset: float = 0.0, lease: float = 10.0) -> list[service.Claimed]:
    with db.write() as session:
        return service.claim(
            session,
            now=utcnow() + timedelta(seconds=at_offset),
            limit=10,
            lease=lease,
            max_steps=len(SCHEDULE) + 1,
        )


def _record(db: Database, claimed: service.Claimed, result: service.AttemptResult) -> str:
    with db.write() as session:
        return service.record(session, claimed, result, schedule=SCHEDULE)


def _row(db: Database, notification_id: str) -> Notification:
    with db.read() as session:
        row = session.get(Notification, notification_id)
        assert row is not None
        return row


def test_a_result_that_arrives_after_its_claim_expired_is_ignored(db: Database) -> None:
    notification_id = _notification(db)
    [first] = _claim(db, lease=1)
    [second] = _claim(db, at_offset=2, lease=10)  # the first claim ran out
    assert _record(db, second, OK) == "delivered"
    assert _record(db, first, FAIL) == "delivered"  # too late: changes nothing
    with db.read() as session:
        outcomes = [
            a.outcome for a in session.query(DeliveryAttempt).order_by(DeliveryAttempt.number).all()
        ]
    assert outcomes == ["interrupted", "delivered"]
    assert _row(db, notification_id).state == "delivered"


def test_redelivery_during_an_attempt_keeps_it_due_now(db: Database) -> None:
    notification_id = _notification(db)
    [claimed] = _claim(db)
    with db.write() as session:
        assert service.redeliver(session, notification_id)
    assert _record(db, claimed, FAIL) == "pending"
    row = _row(db, notification_id)
    assert row.next_attempt_at <= utcnow()  # not pushed to the schedule's last step


def test_a_row_whose_attempts_never_got_recorded_is_given_up(db: Database) -> None:
    notification_id = _notification(db)
    for round_ in range(len(SCHEDULE) + 1):  # every worker dies during its attempt
        assert len(_claim(db, at_offset=20 * round_, lease=10)) == 1
    assert _claim(db, at_offset=100) == []
    row = _row(db, notification_id)
    assert row.state == "failed" and "ever recorded" in row.last_error
