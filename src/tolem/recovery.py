"""Recovery after a crash: settle what a killed process left half done.

A payment is three steps (claim, the acquirer's call, finish) and so is a charge,
cancel or refund (begin, call, finish). A process killed between them leaves:

- a payment ``NEW`` (not waiting for 3-D Secure) whose outcome tolem never recorded;
- an operation ``pending``, holding its transaction's operation lock (charge, cancel)
  or a reserved amount (``amount_refund_pending``, refund);
- a card held for saving whose payment ended without keeping or dropping it.

:func:`sweep` finds them and settles each by **asking** the acquirer what became of its
reference (:meth:`~tolem.processor.base.Acquirer.inquire`), never by sending the call
again: approved or declined, the answer is recorded as the live call would have
recorded it (outcome, history line and postLink in one transaction); no record at the
acquirer means the call never reached it, and the payment fails (or the operation is
declined, its lock or reservation released) with reason :data:`NEVER_REACHED`.

Only what is older than a grace period is touched: a call still under way in a live
process must not be mistaken for a lost one (the acquirer could see it after the sweep
asked). The grace is :func:`grace_of` the terminal's acquirer.

Every process may sweep at once: each change is a conditional update of a row still in
progress (as ``payments.service.finish`` does), so two sweepers, or a sweeper and the
live request, record one outcome between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from starlette.concurrency import run_in_threadpool

from tolem.cards.models import CardState, SavedCard
from tolem.db.base import utcnow
from tolem.merchants.models import Terminal
from tolem.operations import actions
from tolem.payments import service as payments
from tolem.payments.models import Operation, Status, Transaction
from tolem.processor.base import Acquirer, ProcessorResult
from tolem.runtime import Runtime

log = logging.getLogger("tolem.recovery")

#: The reason of a payment (or operation) the acquirer has no record of: the process
#: died before its call reached the acquirer, so no money moved ("Transaction could not
#: be performed").
NEVER_REACHED = 1759
#: The reason of a payment the acquirer holds a 3-D Secure challenge for that tolem never
#: recorded (the process died before answering): the cardholder never saw it.
CHALLENGE_LOST = 473

#: How long a call to an acquirer that declares no ``max_call_seconds`` may take.
DEFAULT_MAX_CALL_SECONDS = 30.0
#: Added to twice the longest call: the wait for a thread and a database write.
GRACE_MARGIN_SECONDS = 5.0

#: Statuses of a payment the acquirer declined: its held card is dropped.
_DECLINED = frozenset({Status.FAILED.value, Status.REJECT.value, Status.THREE_DS_FAILED.value})


def grace_of(acquirer: Acquirer) -> float:
    """Seconds after which an unfinished call to this acquirer counts as abandoned.

    A connector may declare ``max_call_seconds``, the longest one call to it can take
    (its own timeout); the grace is twice that plus :data:`GRACE_MARGIN_SECONDS`.
    """
    declared = getattr(acquirer, "max_call_seconds", None)
    longest = float(declared) if isinstance(declared, int | float) else DEFAULT_MAX_CALL_SECONDS
    return 2 * longest + GRACE_MARGIN_SECONDS


@dataclass
class Recovered:
    """What one sweep settled."""

    payments: int = 0
    operations: int = 0
    cards: int = 0

    @property
    def total(self) -> int:
        return self.payments + self.operations + self.cards


def sweep(rt: Runtime, now: datetime | None = None, limit: int = 200) -> Recovered:
    """Settle up to ``limit`` of each kind of unfinished work older than its grace."""
    now = now or utcnow()
    acquirers = [rt.simulator] if rt.acquirer is None else [rt.simulator, rt.acquirer]
    shortest = min(grace_of(acquirer) for acquirer in acquirers)
    before = now - timedelta(seconds=shortest)
    done = Recovered()
    done.payments = _payments(rt, now, before, limit)
    done.operations = _operations(rt, now, before, limit)
    done.cards = _cards(rt, limit)
    if done.total:
        log.warning(
            "recovered %d payments, %d operations, %d held cards left by a stopped process",
            done.payments,
            done.operations,
            done.cards,
        )
    return done


def _abandoned(rt: Runtime, terminal: Terminal, created: datetime, now: datetime) -> bool:
    return created <= now - timedelta(seconds=grace_of(rt.acquirer_for(terminal)))


def _inquire(acquirer: Acquirer, reference: str) -> ProcessorResult | Exception | None:
    try:
        return acquirer.inquire(reference)
    except Exception as exc:  # unreachable: asked again at the next sweep
        log.warning("recovery could not ask the acquirer about %s: %s", reference, exc)
        return exc


def _payments(rt: Runtime, now: datetime, before: datetime, limit: int) -> int:
    with rt.db.read() as session:
        rows = session.execute(
            select(Transaction, Terminal)
            .join(Terminal, Terminal.id == Transaction.terminal_id)
            .where(
                Transaction.status == Status.NEW.value,
                # Not waiting for 3-D Secure (expire_stale's work). Written so that no
                # index serves it: SQLite's planner would take the unique index on
                # three_ds_md (NULL in nearly every row) over ix_transactions_new.
                func.coalesce(Transaction.three_ds_md, "") == "",
                Transaction.created_at <= before,
            )
            .order_by(Transaction.created_at)
            .limit(limit)
        ).all()
    recovered = 0
    for tx, terminal in rows:
        if not _abandoned(rt, terminal, tx.created_at, now):
            continue
        answer = _inquire(rt.acquirer_for(terminal), tx.id)
        if isinstance(answer, Exception):
            continue
        if answer is None:
            result = ProcessorResult(approved=False, reason_code=NEVER_REACHED)
        elif answer.challenge is not None or (not answer.approved and answer.reason_code == 0):
            result = ProcessorResult(approved=False, reason_code=CHALLENGE_LOST)
        else:
            result = answer
        with rt.db.write() as session:
            final = payments.finish(session, tx, result, capture=payments.captures(tx, terminal))
        if final is tx:  # this sweep recorded it (not a sweeper or request before it)
            recovered += 1
            log.warning(
                "recovered payment %s: %s (the acquirer %s)",
                tx.id,
                tx.status,
                "had no record of it" if answer is None else "answered",
            )
    return recovered


def _operations(rt: Runtime, now: datetime, before: datetime, limit: int) -> int:
    with rt.db.read() as session:
        rows = session.execute(
            select(Operation.id, Operation.created_at, Terminal)
            .join(Transaction, Transaction.id == Operation.transaction_id)
            .join(Terminal, Terminal.id == Transaction.terminal_id)
            .where(Operation.state == "pending", Operation.created_at <= before)
            .order_by(Operation.created_at)
            .limit(limit)
        ).all()
    recovered = 0
    for op_id, created, terminal in rows:
        if not _abandoned(rt, terminal, created, now):
            continue
        answer = _inquire(rt.acquirer_for(terminal), op_id)
        if isinstance(answer, Exception):
            continue
        result = answer or ProcessorResult(approved=False, reason_code=NEVER_REACHED)
        with rt.db.write() as session:
            op = session.get(Operation, op_id)
            if op is None or op.state != "pending":
                continue
            if actions.record(session, op, result)[1]:
                recovered += 1
                log.warning("recovered %s %s: %s", op.kind, op_id, op.state)
    return recovered


def _cards(rt: Runtime, limit: int) -> int:
    """Keep or drop cards held by payments that ended without settling them."""
    with rt.db.read() as session:
        rows = session.execute(
            select(SavedCard, Transaction)
            .join(Transaction, Transaction.id == SavedCard.transaction_id)
            .where(
                SavedCard.state == CardState.PENDING.value,
                Transaction.status != Status.NEW.value,
            )
            .limit(limit)
        ).all()
    settled = 0
    for card, tx in rows:
        still_pending = (SavedCard.id == card.id, SavedCard.state == CardState.PENDING.value)
        with rt.db.write() as session:
            if tx.status in _DECLINED:
                changed = session.execute(delete(SavedCard).where(*still_pending)).rowcount  # type: ignore[attr-defined]
                settled += changed
                continue
            # As cards.settle: the same customer's same card keeps the id it already has.
            existing = session.scalars(
                select(SavedCard.id).where(
                    SavedCard.merchant_id == card.merchant_id,
                    SavedCard.account_id == card.account_id,
                    SavedCard.card_fingerprint == card.card_fingerprint,
                    SavedCard.state == CardState.ACTIVE.value,
                )
            ).first()
            if existing is not None:
                changed = session.execute(delete(SavedCard).where(*still_pending)).rowcount  # type: ignore[attr-defined]
                card_id = existing
            else:
                changed = session.execute(
                    update(SavedCard)
                    .where(*still_pending)
                    .values(state=CardState.ACTIVE.value, updated_at=utcnow())
                ).rowcount  # type: ignore[attr-defined]
                card_id = card.id
            if changed:
                session.execute(
                    update(Transaction)
                    .where(Transaction.id == tx.id, Transaction.card_id == "")
                    .values(card_id=card_id)
                )
            settled += changed
    return settled


def interval_of(rt: Runtime) -> float:
    """Seconds between sweeps: as the 3-D Secure expiry's, 1 to 15."""
    return max(1.0, min(15.0, rt.settings.secure3d_timeout / 4))


def sweep_safely(rt: Runtime) -> Recovered | None:
    """:func:`sweep`, logging (not raising) what went wrong: the next one tries again."""
    try:
        return sweep(rt)
    except Exception:
        log.exception("recovery sweep failed; retrying")
        return None


async def keep_recovering(rt: Runtime, stop: asyncio.Event) -> None:
    """Sweep now (start-up) and then every :func:`interval_of` seconds until ``stop``."""
    interval = interval_of(rt)
    while not stop.is_set():
        await run_in_threadpool(sweep_safely, rt)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
