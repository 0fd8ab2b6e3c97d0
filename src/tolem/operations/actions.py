"""Charge, cancel and refund (EPAY.md sections 8 and 11).

Life cycle: AUTH → CHARGE (charge, full or partial) or CANCEL (cancel); CHARGE →
partial refunds → REFUND once everything charged is refunded.

Each operation is three steps, like a payment: **begin** (one write transaction
checks the state and takes what the operation needs: the transaction's operation
lock for a charge or cancel, so that a charge racing a cancel cannot both proceed;
the refund's amount in ``amount_refund_pending``, so that refunds racing each other
never add up to more than was charged), the **acquirer** call outside any
transaction with the operation's id as its idempotency reference, then **finish**
(one write transaction records the outcome, the history line and the postLink).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from sqlalchemy import literal, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from tolem import reasons
from tolem.db.base import Money, new_id, utcnow
from tolem.errors import BadRequest
from tolem.merchants.models import Terminal
from tolem.notifications import service as notifications
from tolem.payments.models import Operation, Status, Transaction, TransactionEvent
from tolem.processor.base import ProcessorResult
from tolem.runtime import Runtime

log = logging.getLogger("tolem.operations")

CHARGE, CANCEL, REFUND = "charge", "cancel", "refund"
#: ePay's smallest refund (EPAY.md section 8), in the currency's major unit.
MIN_REFUND = Decimal("10")


class OperationRefused(BadRequest):
    """ePay's operation error: HTTP 400, code 100, a message that says what is wrong."""

    def __init__(self, message: str, ru: str = "") -> None:
        super().__init__(message, code=100)
        #: The same in Russian, for the cabinet's Russian pages ("" when not written).
        self.ru = ru


_EXCEED = ("the refunds would exceed the amount charged", "возвраты превысили бы списанную сумму")


@dataclass(frozen=True)
class Outcome:
    operation: Operation
    transaction: Transaction


class Scope(Protocol):
    """Whose transactions an operation may touch: an API token (tolem.oauth.tokens
    .AccessToken) or a cabinet user's merchant (:class:`MerchantScope`)."""

    @property
    def merchant_id(self) -> str: ...

    @property
    def terminal_id(self) -> str: ...  # "" for any of the merchant's terminals

    @property
    def invoice_id(self) -> str: ...  # "" for any invoice


@dataclass(frozen=True)
class MerchantScope:
    """All of one merchant's transactions: what a cabinet user may operate on."""

    merchant_id: str
    terminal_id: str = ""
    invoice_id: str = ""


def _find(session: Session, scope: Scope, tx_id: str) -> Transaction:
    """The scope's merchant's transaction (and terminal, invoice if bound), or 'not found'."""
    tx = session.get(Transaction, tx_id) if len(tx_id) <= 36 else None
    if (
        tx is None
        or tx.merchant_id != scope.merchant_id
        or (scope.terminal_id and tx.terminal_id != scope.terminal_id)
        or (scope.invoice_id and tx.invoice_id != scope.invoice_id)
    ):
        raise OperationRefused("transaction not found", "транзакция не найдена")
    return tx


def begin(
    session: Session,
    scope: Scope,
    tx_id: str,
    kind: str,
    amount: Decimal | None,
    external_id: str = "",
    unchanged_since: datetime | None = None,
    performed_by: str = "api",
) -> tuple[Operation, Transaction]:
    """Check and take what the operation needs. ``unchanged_since`` (the cabinet's
    confirmation) refuses it if the transaction changed after that moment, in the same
    conditional update that takes the lock or reserves the refund, so one confirmation
    performs at most one operation even when posted twice at once."""
    tx = _find(session, scope, tx_id)
    changed = "the transaction changed meanwhile; look at it again"
    changed_ru = "транзакция тем временем изменилась; откройте её заново"
    same = [] if unchanged_since is None else [Transaction.updated_at == unchanged_since]
    if unchanged_since is not None and tx.updated_at != unchanged_since:
        raise OperationRefused(changed, changed_ru)
    op = Operation(
        id=new_id(),
        transaction_id=tx.id,
        kind=kind,
        external_id=external_id,
        amount=Decimal(0),
        performed_by=performed_by[:300],
    )
    if kind in (CHARGE, CANCEL):
        if tx.status != Status.AUTH.value:
            raise OperationRefused(
                f"{kind} needs status AUTH; the transaction is {tx.status}",
                f"нужен статус AUTH; статус транзакции {tx.status}",
            )
        if kind == CHARGE:
            op.amount = tx.amount if amount is None else amount
            if op.amount <= 0 or op.amount > tx.amount:
                raise OperationRefused(
                    f"amount must be more than 0 and at most {tx.amount}",
                    f"сумма должна быть больше 0 и не больше {tx.amount}",
                )
        else:
            if amount is not None:
                raise OperationRefused(
                    "cancel releases the whole amount; send no amount",
                    "отмена снимает всю сумму; сумму указывать не нужно",
                )
            op.amount = tx.amount
        taken = session.execute(
            update(Transaction)
            .where(
                Transaction.id == tx.id,
                Transaction.status == Status.AUTH.value,
                Transaction.operation_lock.is_(None),
                *same,
            )
            .values(operation_lock=op.id, updated_at=utcnow())
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            if same:
                raise OperationRefused(changed, changed_ru)
            raise OperationRefused(
                "another charge or cancel of this transaction is under way",
                "по этой транзакции уже идёт списание или отмена",
            )
    else:
        if tx.status != Status.CHARGE.value:
            raise OperationRefused(
                f"refund needs status CHARGE; the transaction is {tx.status}",
                f"для возврата нужен статус CHARGE; статус транзакции {tx.status}",
            )
        left = tx.amount_charged - tx.amount_refunded - tx.amount_refund_pending
        op.amount = left if amount is None else amount
        if op.amount <= 0:
            raise OperationRefused("nothing is left to refund", "возвращать больше нечего")
        if tx.currency == "KZT" and op.amount < MIN_REFUND:
            raise OperationRefused(
                f"a refund is at least {MIN_REFUND} KZT", f"возврат не меньше {MIN_REFUND} KZT"
            )
        if op.amount > left:  # checked again, atomically, by the update below
            raise OperationRefused(*_EXCEED)
        # Money columns hold minor units: the amount must be bound as Money too.
        wanted = literal(op.amount, Money())
        reserved = session.execute(
            update(Transaction)
            .where(
                Transaction.id == tx.id,
                Transaction.status == Status.CHARGE.value,
                Transaction.amount_refunded + Transaction.amount_refund_pending + wanted
                <= Transaction.amount_charged,
                *same,
            )
            .values(
                amount_refund_pending=Transaction.amount_refund_pending + wanted,
                updated_at=utcnow(),
            )
        )
        if reserved.rowcount != 1:  # type: ignore[attr-defined]
            raise OperationRefused(*((changed, changed_ru) if same else _EXCEED))
    session.add(op)
    return op, tx


def finish(session: Session, op: Operation, result: ProcessorResult) -> Transaction:
    """Record the acquirer's answer, if the operation is still pending.

    If another actor (the recovery sweep, or the request itself while a sweep ran)
    finished it first, nothing changes: its outcome stands (the acquirer, asked with the
    same reference, gave the same answer) and the transaction is returned as it stands.
    """
    return record(session, op, result)[0]


def record(session: Session, op: Operation, result: ProcessorResult) -> tuple[Transaction, bool]:
    """:func:`finish`, and whether this call recorded the outcome (False: one before it did)."""
    tx = session.get(Transaction, op.transaction_id, with_for_update=True, populate_existing=True)
    assert tx is not None
    now = utcnow()
    approved = result.approved
    state = "done" if approved else "declined"
    # The operation's own row decides who records it: a conditional update, after the
    # transaction's row lock, so a second finisher sees it done and changes nothing.
    taken = session.execute(
        update(Operation)
        .where(Operation.id == op.id, Operation.state == "pending")
        .values(state=state, reason_code=result.reason_code, reference=result.rrn, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(op)
        return tx, False
    if op.kind == CHARGE:
        if approved:
            tx.status, tx.amount_charged = Status.CHARGE.value, op.amount
        tx.operation_lock = None
    elif op.kind == CANCEL:
        if approved:
            tx.status = Status.CANCEL.value
        tx.operation_lock = None
    else:
        tx.amount_refund_pending -= op.amount
        if approved:
            tx.amount_refunded += op.amount
            if tx.amount_refunded >= tx.amount_charged:
                tx.status = Status.REFUND.value
    tx.updated_at = now
    for key, value in (
        ("state", state),
        ("reason_code", result.reason_code),
        ("reference", result.rrn),
        ("finished_at", now),
    ):
        set_committed_value(op, key, value)  # as stored by the update above
    session.add(
        TransactionEvent(
            transaction_id=tx.id,
            kind=op.kind if approved else f"{op.kind}-declined",
            status=tx.status,
            amount=op.amount,
            reason_code=result.reason_code,
            detail=op.external_id,
        )
    )
    if approved:
        notifications.enqueue(session, tx, event=op.kind)
    log.info("%s %s of %s: %s", op.kind, op.amount, tx.id, state)
    return tx, True


def run(
    rt: Runtime,
    scope: Scope,
    tx_id: str,
    kind: str,
    amount: Decimal | None = None,
    external_id: str = "",
    unchanged_since: datetime | None = None,
    performed_by: str = "api",
) -> Outcome:
    """Begin, ask the acquirer, finish. Raises :class:`OperationRefused`.

    The API passes its access token, the cabinet a :class:`MerchantScope` and the user
    (``performed_by="cabinet:<email>"``, kept on the operation): one path.
    """
    with rt.db.write() as session:
        op, tx = begin(
            session, scope, tx_id, kind, amount, external_id, unchanged_since, performed_by
        )
        terminal = session.get(Terminal, tx.terminal_id)
        assert terminal is not None
        acquirer = rt.acquirer_for(terminal)  # before the lock or reservation commits
    reference = op.id  # the acquirer's idempotency key for this operation
    try:
        if kind == CHARGE:
            result = acquirer.capture(reference, tx.id, op.amount)
        elif kind == CANCEL:
            result = acquirer.void(reference, tx.id)
        else:
            result = acquirer.refund(reference, tx.id, op.amount)
    except Exception:
        # Unknown outcome: the lock or the reserved amount stays, so nothing can be
        # done twice; recovery asks the acquirer (inquire) about this reference.
        log.exception("acquirer unreachable for %s %s", kind, reference)
        raise OperationRefused(
            "the processor did not answer; the operation is pending",
            "процессинг не ответил; операция ожидает ответа",
        ) from None
    with rt.db.write() as session:
        current = session.get(Operation, op.id)
        assert current is not None
        tx = finish(session, current, result)
        op = current
    if not result.approved:
        code = result.reason_code
        raise OperationRefused(
            f"declined: {reasons.message(code)}", f"отклонено: {reasons.message_ru(code)}"
        )
    return Outcome(op, tx)


def history(session: Session, tx_id: str) -> list[Operation]:
    return list(
        session.scalars(
            select(Operation)
            .where(Operation.transaction_id == tx_id)
            .order_by(Operation.created_at)
        )
    )
