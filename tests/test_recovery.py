"""The recovery sweep (tolem.recovery) on a real database, SQLite and PostgreSQL.

Each test leaves work unfinished exactly as a process killed between two steps would
(the claim or an operation's begin committed, the acquirer called or not, the finish
never run), then sweeps, and checks what the sweep recorded against the acquirer's own
ledger (tests/crash_acquirer.py), which also proves nothing was sent to it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.crash_acquirer import LedgerAcquirer
from tolem import recovery
from tolem.cards.models import CardState, SavedCard
from tolem.config import Settings
from tolem.db.base import utcnow
from tolem.db.migrate import prepare_database
from tolem.merchants.models import Terminal
from tolem.merchants.service import SANDBOX_TERMINAL_ID, create_merchant
from tolem.notifications.models import Notification
from tolem.oauth.tokens import AccessToken
from tolem.operations import actions
from tolem.payments import service as payments
from tolem.payments.models import Operation, Transaction, TransactionEvent
from tolem.processor.base import Card, Challenge
from tolem.runtime import Runtime

CARD = Card(pan="4405639704015096", exp_month=1, exp_year=2030, cvc="815")
POST_LINK = "http://127.0.0.1:9/ok"
FAILURE_LINK = "http://127.0.0.1:9/fail"


@pytest.fixture
def rt(
    postgres_or_sqlite_empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Runtime]:
    monkeypatch.setenv("TOLEM_TEST_ACQUIRER_LEDGER", str(tmp_path / "acquirer.db"))
    settings = Settings(
        database_url=postgres_or_sqlite_empty_url,
        data_dir=tmp_path,
        acquirer="tests.crash_acquirer:create",
    )
    runtime = Runtime.start(settings)
    prepare_database(runtime.db, sandbox=True)
    try:
        yield runtime
    finally:
        runtime.close()


def acquirer(rt: Runtime) -> LedgerAcquirer:
    assert isinstance(rt.acquirer, LedgerAcquirer)
    return rt.acquirer


@dataclass(frozen=True)
class Shop:
    merchant_id: str
    terminal: Terminal


def shop(rt: Runtime, *, two_step: bool = False) -> Shop:
    """A merchant whose terminal is not a test one: it pays through the LedgerAcquirer."""
    with rt.db.write() as session:
        creds = create_merchant(session, "Crash shop", is_test=False, two_step=two_step)
    with rt.db.read() as session:
        terminal = session.get(Terminal, creds.terminal_id)
    assert terminal is not None and rt.acquirer_for(terminal) is rt.acquirer
    return Shop(creds.merchant_id, terminal)


_invoices = iter(range(100_000, 999_999))


def claimed(
    rt: Runtime, where: Shop, amount: str = "100", *, card_save: bool = False
) -> Transaction:
    """A payment claimed (NEW) and nothing after it: the process died right there."""
    invoice = f"{next(_invoices):09d}"
    token = AccessToken(
        merchant_id=where.merchant_id,
        terminal_id=where.terminal.id,
        scope="payment",
        invoice_id=invoice,
        amount=None,
        currency="KZT",
        post_link=POST_LINK,
        failure_post_link=FAILURE_LINK,
        secret_hash="",
        expires_at=int(time.time()) + 3600,
    )
    order = payments.PaymentOrder(
        amount=Decimal(amount),
        currency="KZT",
        name="JON JONSON",
        invoice_id=invoice,
        description="recovery test",
        account_id="customer-1",
        card_save=card_save,
    )
    with rt.db.write() as session:
        tx, _ = payments.claim(
            session,
            payments.PaymentContext(token, "127.0.0.1"),
            order,
            where.terminal.id,
            CARD,
            fingerprint_key=rt.keys.fingerprint_key,
            vault=rt.vault,
        )
    return tx


def authorized(rt: Runtime, where: Shop, tx: Transaction) -> None:
    """The acquirer's call made and answered; the process died before recording it."""
    assert payments.authorize(acquirer(rt), tx, where.terminal, CARD) is not None


def paid(rt: Runtime, where: Shop, amount: str = "100") -> Transaction:
    """A payment completed the normal way."""
    tx = claimed(rt, where, amount)
    result = payments.authorize(acquirer(rt), tx, where.terminal, CARD)
    assert result is not None
    with rt.db.write() as session:
        return payments.finish(session, tx, result, capture=not where.terminal.two_step)


def begun(rt: Runtime, where: Shop, tx: Transaction, kind: str, amount: str | None) -> str:
    """An operation begun (its lock or reservation committed); the process died then."""
    scope = actions.MerchantScope(where.merchant_id)
    with rt.db.write() as session:
        op, _ = actions.begin(
            session, scope, tx.id, kind, None if amount is None else Decimal(amount)
        )
    return op.id


def later() -> datetime:
    """A moment past the LedgerAcquirer's grace (2 x 1 s + 5 s) and short of the simulator's."""
    return utcnow() + timedelta(seconds=30)


def stored(rt: Runtime, tx_id: str) -> Transaction:
    with rt.db.read() as session:
        tx = session.get(Transaction, tx_id)
        assert tx is not None
        return tx


def notifications_of(rt: Runtime, tx_id: str) -> list[tuple[str, str]]:
    """(event, url) of each postLink enqueued for the transaction."""
    with rt.db.read() as session:
        rows = session.execute(
            select(Notification.event, Notification.url).where(Notification.transaction_id == tx_id)
        ).all()
    return [(event, url) for event, url in rows]


def events_of(rt: Runtime, tx_id: str) -> list[str]:
    with rt.db.read() as session:
        return list(
            session.scalars(
                select(TransactionEvent.kind)
                .where(TransactionEvent.transaction_id == tx_id)
                .order_by(TransactionEvent.id)
            )
        )


def operation(rt: Runtime, op_id: str) -> Operation:
    with rt.db.read() as session:
        op = session.get(Operation, op_id)
        assert op is not None
        return op


def test_grace_follows_what_the_connector_declares(rt: Runtime) -> None:
    assert recovery.grace_of(acquirer(rt)) == 7.0  # 2 x max_call_seconds + 5
    assert recovery.grace_of(rt.simulator) == 65.0  # 30 s assumed, not declared


def test_a_payment_the_acquirer_never_saw_fails_and_its_invoice_is_free(rt: Runtime) -> None:
    where = shop(rt)
    tx = claimed(rt, where)
    assert recovery.sweep(rt, now=later()).payments == 1
    after = stored(rt, tx.id)
    assert (after.status, after.reason_code) == ("FAILED", recovery.NEVER_REACHED)
    assert after.invoice_claim is None  # the shop may retry the order
    assert notifications_of(rt, tx.id) == [("payment", FAILURE_LINK)]
    assert events_of(rt, tx.id) == ["created", "declined"]
    assert acquirer(rt).calls() == []  # asked (inquire), never sent


def test_an_approval_is_recorded_from_the_acquirer_not_asked_for_again(rt: Runtime) -> None:
    where = shop(rt)
    tx = claimed(rt, where, "250")
    authorized(rt, where, tx)
    assert recovery.sweep(rt, now=later()).payments == 1
    after = stored(rt, tx.id)
    (row,) = acquirer(rt).rows()
    assert (after.status, after.reason_code, after.reference) == ("CHARGE", 0, row[6])
    assert after.amount_charged == Decimal("250.00")
    assert notifications_of(rt, tx.id) == [("payment", POST_LINK)]
    assert acquirer(rt).calls() == [("authorize", tx.id)]  # once, by the "request"
    assert recovery.sweep(rt, now=later()).total == 0  # nothing left


def test_a_decline_is_recorded_as_the_acquirer_declined_it(rt: Runtime) -> None:
    where = shop(rt, two_step=True)
    tx = claimed(rt, where, "107")  # ends in 7: the LedgerAcquirer declines with 484
    authorized(rt, where, tx)
    assert recovery.sweep(rt, now=later()).payments == 1
    after = stored(rt, tx.id)
    assert (after.status, after.reason_code) == ("FAILED", 484)
    assert notifications_of(rt, tx.id) == [("payment", FAILURE_LINK)]


def test_a_two_step_approval_is_auth(rt: Runtime) -> None:
    where = shop(rt, two_step=True)
    tx = claimed(rt, where)
    authorized(rt, where, tx)
    recovery.sweep(rt, now=later())
    assert stored(rt, tx.id).status == "AUTH"


def test_young_payments_and_those_waiting_for_3ds_are_left_alone(rt: Runtime) -> None:
    where = shop(rt)
    young = claimed(rt, where)
    assert recovery.sweep(rt).total == 0  # within its grace: perhaps still under way
    waiting = claimed(rt, where)
    with rt.db.write() as session:
        payments.await_authentication(
            session, waiting, Challenge("pareq", "md-1", "https://acs"), timeout=600, capture=True
        )
    assert recovery.sweep(rt, now=later()).payments == 1  # the young one, now old
    assert stored(rt, young.id).status == "FAILED"
    assert stored(rt, waiting.id).status == "NEW"  # 3-D Secure expiry's business


def test_a_refund_never_sent_is_declined_and_its_reservation_released(rt: Runtime) -> None:
    where = shop(rt)
    tx = paid(rt, where, "300")
    op_id = begun(rt, where, tx, actions.REFUND, "100")
    assert stored(rt, tx.id).amount_refund_pending == Decimal("100.00")
    assert recovery.sweep(rt, now=later()).operations == 1
    after = stored(rt, tx.id)
    assert (after.status, after.amount_refund_pending, after.amount_refunded) == (
        "CHARGE",
        Decimal("0.00"),
        Decimal("0.00"),
    )
    op = operation(rt, op_id)
    assert (op.state, op.reason_code) == ("declined", recovery.NEVER_REACHED)
    assert acquirer(rt).calls("refund") == []


def test_a_refund_the_acquirer_made_is_recorded_with_its_postlink(rt: Runtime) -> None:
    where = shop(rt)
    tx = paid(rt, where, "300")
    op_id = begun(rt, where, tx, actions.REFUND, None)  # everything
    assert acquirer(rt).refund(op_id, tx.id, Decimal("300")).approved
    assert recovery.sweep(rt, now=later()).operations == 1
    after = stored(rt, tx.id)
    assert (after.status, after.amount_refunded, after.amount_refund_pending) == (
        "REFUND",
        Decimal("300.00"),
        Decimal("0.00"),
    )
    assert operation(rt, op_id).state == "done"
    assert [e for e, _ in notifications_of(rt, tx.id)] == ["payment", "refund"]
    assert acquirer(rt).calls("refund") == [("refund", op_id)]
    assert acquirer(rt).refunded(tx.id) == after.amount_refunded


def test_a_charge_and_a_cancel_left_pending_release_the_operation_lock(rt: Runtime) -> None:
    where = shop(rt, two_step=True)
    charged = paid(rt, where)
    op_id = begun(rt, where, charged, actions.CHARGE, "60")
    assert stored(rt, charged.id).operation_lock == op_id
    assert acquirer(rt).capture(op_id, charged.id, Decimal("60")).approved
    cancelled = paid(rt, where)
    cancel_id = begun(rt, where, cancelled, actions.CANCEL, None)  # never sent
    assert recovery.sweep(rt, now=later()).operations == 2
    after = stored(rt, charged.id)
    assert (after.status, after.amount_charged, after.operation_lock) == (
        "CHARGE",
        Decimal("60.00"),
        None,
    )
    kept = stored(rt, cancelled.id)
    assert (kept.status, kept.operation_lock) == ("AUTH", None)  # may be cancelled again
    assert operation(rt, cancel_id).state == "declined"
    assert acquirer(rt).calls("void") == []


def test_an_operation_finished_twice_counts_once(rt: Runtime) -> None:
    """The request's own finish after a sweep (or two sweepers) change nothing twice."""
    where = shop(rt)
    tx = paid(rt, where, "300")
    op_id = begun(rt, where, tx, actions.REFUND, "100")
    result = acquirer(rt).refund(op_id, tx.id, Decimal("100"))
    firsts = []
    for _ in range(2):
        with rt.db.write() as session:
            op = session.get(Operation, op_id)
            assert op is not None
            firsts.append(actions.record(session, op, result)[1])
    assert firsts == [True, False]
    after = stored(rt, tx.id)
    assert (after.amount_refunded, after.amount_refund_pending) == (
        Decimal("100.00"),
        Decimal("0.00"),
    )
    assert [e for e, _ in notifications_of(rt, tx.id)] == ["payment", "refund"]


def _card_of(rt: Runtime, tx_id: str) -> SavedCard | None:
    with rt.db.read() as session:
        return session.scalars(select(SavedCard).where(SavedCard.transaction_id == tx_id)).first()


def test_held_cards_are_kept_or_dropped_with_their_payment(rt: Runtime) -> None:
    where = shop(rt)
    # Died after the acquirer approved: the sweep's finish keeps the card.
    approved = claimed(rt, where, card_save=True)
    authorized(rt, where, approved)
    # Finished without settling its card (as a finish told card_held=False would):
    # approved, and declined.
    leftover = claimed(rt, where, card_save=True)
    declined = claimed(rt, where, "117", card_save=True)
    for tx in (leftover, declined):
        result = payments.authorize(acquirer(rt), tx, where.terminal, CARD)
        assert result is not None
        with rt.db.write() as session:
            payments.finish(session, tx, result, capture=True, card_held=False)
    found = recovery.sweep(rt, now=later())
    assert (found.payments, found.cards) == (1, 2)
    card = _card_of(rt, approved.id)
    assert card is not None and card.state == CardState.ACTIVE.value
    assert stored(rt, approved.id).card_id == card.id
    # The leftover is the same customer's same card: it gets the id already kept.
    assert _card_of(rt, leftover.id) is None
    assert stored(rt, leftover.id).card_id == card.id
    assert _card_of(rt, declined.id) is None  # nothing of a declined card is kept
    assert stored(rt, declined.id).card_id == ""


def test_sweepers_racing_record_each_outcome_once(rt: Runtime) -> None:
    where = shop(rt)
    unfinished = [claimed(rt, where, amount) for amount in ("100", "117", "200", "300")]
    for tx in unfinished[:3]:
        authorized(rt, where, tx)  # the fourth never reached the acquirer
    refunded = paid(rt, where, "500")
    ops = [begun(rt, where, refunded, actions.REFUND, "100") for _ in range(3)]
    acquirer(rt).refund(ops[0], refunded.id, Decimal("100"))
    moment = later()
    totals: list[recovery.Recovered] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def sweeper() -> None:
        try:
            start.wait()
            totals.append(recovery.sweep(rt, now=moment))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweeper) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sum(t.payments for t in totals) == 4
    assert sum(t.operations for t in totals) == 3
    statuses = [stored(rt, tx.id).status for tx in unfinished]
    assert statuses == ["CHARGE", "FAILED", "CHARGE", "FAILED"]
    for tx in unfinished:
        assert len(notifications_of(rt, tx.id)) == 1
        assert events_of(rt, tx.id)[1:] in (["authorized"], ["declined"])
    after = stored(rt, refunded.id)
    assert (after.amount_refunded, after.amount_refund_pending) == (
        Decimal("100.00"),
        Decimal("0.00"),
    )
    with rt.db.read() as session:
        refund_events = session.scalar(
            select(func.count())
            .select_from(TransactionEvent)
            .where(
                TransactionEvent.transaction_id == refunded.id,
                TransactionEvent.kind.like("refund%"),
            )
        )
    assert refund_events == 3  # one done, two declined: one line each
    sent = [*unfinished[:3], refunded]  # each once, before the sweep
    assert acquirer(rt).calls("authorize") == [("authorize", tx.id) for tx in sent]


def test_tolem_worker_sweeps_at_start_up(rt: Runtime, tmp_path: Path) -> None:
    """A deployment whose gateways all died: ``tolem worker`` settles what they left."""
    where = shop(rt)
    approved, never_sent = claimed(rt, where), claimed(rt, where)
    authorized(rt, where, approved)
    with rt.db.write() as session:  # claimed a minute ago: past the grace
        for tx in (approved, never_sent):
            row = session.get(Transaction, tx.id)
            assert row is not None
            row.created_at = utcnow() - timedelta(seconds=60)
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLEM_")} | {
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        "TOLEM_DATA_DIR": str(tmp_path),
        "TOLEM_DATABASE_URL": rt.settings.database_url,
        "TOLEM_ACQUIRER": "tests.crash_acquirer:create",
        "TOLEM_TEST_ACQUIRER_LEDGER": os.environ["TOLEM_TEST_ACQUIRER_LEDGER"],
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "tolem", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and stored(rt, never_sent.id).status == "NEW":
            assert worker.poll() is None, worker.communicate()[0]
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert worker.returncode == 0, output
    assert (stored(rt, approved.id).status, stored(rt, never_sent.id).status) == (
        "CHARGE",
        "FAILED",
    ), output
    assert "recovered payment" in output
    assert acquirer(rt).calls() == [("authorize", approved.id)]


@pytest.fixture
def sandbox(postgres_or_sqlite_empty_url: str, tmp_path: Path) -> Iterator[Runtime]:
    """A sandbox gateway without a connector: every terminal pays through the simulator."""
    runtime = Runtime.start(Settings(database_url=postgres_or_sqlite_empty_url, data_dir=tmp_path))
    prepare_database(runtime.db, sandbox=True)
    try:
        yield runtime
    finally:
        runtime.close()


def test_the_simulator_is_asked_too_after_its_longer_grace(sandbox: Runtime) -> None:
    rt = sandbox
    assert rt.acquirer is None
    with rt.db.read() as session:
        terminal = session.get(Terminal, SANDBOX_TERMINAL_ID)
        assert terminal is not None
    where = Shop(terminal.merchant_id, terminal)
    approved, never_sent = claimed(rt, where), claimed(rt, where)
    published = Card(pan="4405639704015096", exp_month=1, exp_year=2027, cvc="321")
    assert payments.authorize(rt.simulator, approved, terminal, published) is not None
    assert recovery.sweep(rt, now=later()).total == 0  # 30 s: within the simulator's 65
    found = recovery.sweep(rt, now=utcnow() + timedelta(seconds=70))
    assert found.payments == 2
    assert stored(rt, approved.id).status == "AUTH"  # the sandbox terminal is two-step
    assert (stored(rt, never_sent.id).status, stored(rt, never_sent.id).reason_code) == (
        "FAILED",
        recovery.NEVER_REACHED,
    )
