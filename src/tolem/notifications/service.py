"""The outbox's rules: what to announce, when to try again, and who may see it.

``enqueue`` runs inside the transaction that changes a payment, so the change and its
notification commit together or not at all. Workers ``claim`` due rows (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL; SQLite's single writer serialises claims by itself) and
``record`` what each attempt gave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from tolem import wire
from tolem.db.base import new_row, utcnow
from tolem.db.direct import Direct
from tolem.merchants.models import Merchant
from tolem.notifications.body import postlink_body
from tolem.notifications.models import (
    AttemptOutcome,
    DeliveryAttempt,
    Notification,
    NotificationState,
)
from tolem.payments.models import Status, Transaction

_NOTIFICATIONS = cast(Table, Notification.__table__)
_ATTEMPTS = cast(Table, DeliveryAttempt.__table__)
_INSERT_NOTIFICATION = Direct(insert(_NOTIFICATIONS))
# What ``record`` writes, run on the driver's cursor (tolem.db.direct): the delivery
# worker records hundreds of attempts a second, and the ORM's get-and-flush of each row
# cost it more than sending the postLink (BENCHMARKS.md, "Fourth round").
#: An attempt's result, if it is still the notification's attempt under way.
_FINISH_ATTEMPT = Direct(
    update(_ATTEMPTS).where(
        _ATTEMPTS.c.id == bindparam("where_id"),
        _ATTEMPTS.c.outcome == bindparam("where_outcome"),
    )
)
_UPDATE_NOTIFICATION = Direct(
    update(_NOTIFICATIONS).where(_NOTIFICATIONS.c.id == bindparam("where_id"))
)

#: The default retry schedule: seconds after each failed attempt, then give up.
DEFAULT_SCHEDULE = (10.0, 60.0, 300.0, 1800.0, 7200.0, 21600.0, 86400.0)


def postlink_of(tx: Transaction, event: str = "payment") -> str:
    """Success to postLink; a failure to failurePostLink, else postLink (EPAY.md §10).

    An operation (charge, cancel, refund) is announced only once approved: a success,
    though it leaves the payment CANCEL or REFUND, so it goes to postLink.
    """
    if event != "payment" or Status(tx.status).succeeded:
        return tx.post_link
    return tx.failure_post_link or tx.post_link


def enqueue(session: Session, tx: Transaction, *, event: str = "payment") -> Notification | None:
    """Write the postLink announcing the transaction's new state, if it has a link."""
    url = postlink_of(tx, event)
    if not url:
        return None
    now = utcnow()
    notification, row = new_row(
        Notification,
        merchant_id=tx.merchant_id,
        transaction_id=tx.id,
        event=event,
        url=url,
        body=wire.dumps(postlink_body(tx, now)).decode("utf-8"),
        state=NotificationState.PENDING.value,
        next_attempt_at=now,
        created_at=now,
    )
    # A Core insert, now: the ORM's unit of work would cost more than the statement.
    _INSERT_NOTIFICATION.execute(session, row)
    return notification


@dataclass(frozen=True)
class Claimed:
    """A notification a worker now owns until ``lease_until``, and its attempt row."""

    id: str
    merchant_id: str
    url: str
    body: str
    attempt_id: int
    number: int
    #: The merchant's postLink signing secret, sealed (``""``: postLinks go unsigned),
    #: read with the claim so that sending needs no query of its own.
    sealed_secret: str = ""


def claim(
    session: Session, *, now: datetime, limit: int, lease: float, max_steps: int = 0
) -> list[Claimed]:
    """Take up to ``limit`` due notifications for one attempt each.

    The claim moves ``next_attempt_at`` past the attempt (the lease), so no other
    worker takes them meanwhile, and a dead worker's rows come due again.
    """
    query = (
        select(Notification)
        .where(
            Notification.state == NotificationState.PENDING.value,
            Notification.next_attempt_at <= now,
        )
        .order_by(Notification.next_attempt_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.scalars(query))
    if not rows:
        return []
    # An attempt still "sending" belongs to a worker that died: it was interrupted.
    session.execute(
        update(DeliveryAttempt)
        .where(
            DeliveryAttempt.notification_id.in_([n.id for n in rows]),
            DeliveryAttempt.outcome == AttemptOutcome.SENDING.value,
        )
        .values(outcome=AttemptOutcome.INTERRUPTED.value, error="the worker stopped during it")
    )
    taken: list[tuple[Notification, DeliveryAttempt]] = []
    for notification in rows:
        if max_steps and notification.step >= max_steps:
            # Its attempts ran out without a result ever recorded (a worker died on it
            # each time): give up, as the schedule says.
            notification.state = NotificationState.FAILED.value
            notification.last_error = "no attempt was ever recorded; given up"
            continue
        notification.attempts += 1
        notification.step += 1
        notification.next_attempt_at = now + timedelta(seconds=lease)
        attempt = DeliveryAttempt(
            notification_id=notification.id, number=notification.attempts, started_at=now
        )
        session.add(attempt)
        taken.append((notification, attempt))
    if not taken:
        return []
    session.flush()  # one flush for the batch: the attempts' ids
    merchant_ids = {n.merchant_id for n, _ in taken}
    sealed = {
        merchant_id: secret
        for merchant_id, secret in session.execute(
            select(Merchant.id, Merchant.signing_secret).where(Merchant.id.in_(merchant_ids))
        )
    }
    return [
        Claimed(
            id=notification.id,
            merchant_id=notification.merchant_id,
            url=notification.url,
            body=notification.body,
            attempt_id=attempt.id,
            number=notification.attempts,
            sealed_secret=sealed.get(notification.merchant_id, ""),
        )
        for notification, attempt in taken
    ]


@dataclass(frozen=True)
class AttemptResult:
    http_status: int | None
    latency_ms: int
    error: str = ""
    permanent: bool = False  # no retry can help (an address that is not allowed)

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


def record(
    session: Session,
    claimed: Claimed,
    result: AttemptResult,
    *,
    schedule: Sequence[float],
    now: datetime | None = None,
) -> str:
    """Store an attempt's result and schedule the next one; the new state."""
    now = now or utcnow()
    notification = session.get(Notification, claimed.id, with_for_update=True)
    if notification is None:  # pragma: no cover - rows are never deleted
        return NotificationState.FAILED.value
    changes: dict[str, object] = {
        "last_status": result.http_status,
        "last_error": result.error,
    }
    if result.delivered:
        outcome = AttemptOutcome.DELIVERED
        changes |= {"state": NotificationState.DELIVERED.value, "delivered_at": now}
    elif result.permanent or notification.step > len(schedule):
        outcome = AttemptOutcome.GAVE_UP
        changes["state"] = NotificationState.FAILED.value
    else:
        outcome = AttemptOutcome.RETRY
        if notification.step >= 1:  # 0: redelivered meanwhile, and due now already
            delay = schedule[notification.step - 1]
            changes["next_attempt_at"] = now + timedelta(seconds=delay)
    finished = _FINISH_ATTEMPT.execute(
        session,
        {
            "outcome": outcome.value,
            "http_status": result.http_status,
            "latency_ms": result.latency_ms,
            "error": result.error[:2000],
            "where_id": claimed.attempt_id,
            "where_outcome": AttemptOutcome.SENDING.value,
        },
    )
    if finished != 1:
        # Too late: the claim expired and another claim took over; its result counts.
        return notification.state
    _UPDATE_NOTIFICATION.execute(session, {**changes, "where_id": notification.id})
    for key, value in changes.items():  # as stored: nothing left for a flush to write
        set_committed_value(notification, key, value)
    return notification.state


def redeliver(session: Session, notification_id: str, *, merchant_id: str | None = None) -> bool:
    """Send again now, with a fresh retry schedule (whatever its state). False if unknown.

    ``merchant_id`` scopes the lookup (the API); the operator's CLI passes None.
    """
    query = select(Notification).where(Notification.id == notification_id)
    if merchant_id is not None:
        query = query.where(Notification.merchant_id == merchant_id)
    notification = session.scalars(query.with_for_update()).first()
    if notification is None:
        return False
    notification.state = NotificationState.PENDING.value
    notification.step = 0
    notification.next_attempt_at = utcnow()
    return True


def listing(
    session: Session,
    *,
    merchant_id: str | None = None,
    state: str | None = None,
    transaction_id: str | None = None,
    limit: int = 100,
) -> list[Notification]:
    """Newest first; scoped to a merchant when one is given."""
    query = select(Notification).order_by(Notification.created_at.desc()).limit(limit)
    if merchant_id is not None:
        query = query.where(Notification.merchant_id == merchant_id)
    if state:
        query = query.where(Notification.state == state)
    if transaction_id:
        query = query.where(Notification.transaction_id == transaction_id)
    return list(session.scalars(query))


def attempts_of(session: Session, notification_id: str) -> list[DeliveryAttempt]:
    return list(
        session.scalars(
            select(DeliveryAttempt)
            .where(DeliveryAttempt.notification_id == notification_id)
            .order_by(DeliveryAttempt.number)
        )
    )
