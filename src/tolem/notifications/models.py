"""The outbox: one row per postLink to send, and one per attempt to send it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tolem.db.base import Base, UTCDateTime, new_id, utcnow


class NotificationState(StrEnum):
    PENDING = "pending"  # to be sent at next_attempt_at (also while an attempt runs)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # the retry schedule ran out, or the address is not allowed


class Notification(Base):
    """A postLink, written in the same transaction as the state change it announces.

    ``next_attempt_at`` is also the lease of a running attempt: a worker that claims
    the row moves it past the attempt's timeout, so a worker that dies mid-attempt
    leaves a row that becomes due again by itself (delivery is at least once).
    """

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_due", "state", "next_attempt_at"),
        # The cabinet's notifications page: one merchant's, by state, newest first
        # (migration 0010).
        Index("ix_notifications_merchant_state", "merchant_id", "state", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)  # webhook-id
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"), index=True)
    event: Mapped[str] = mapped_column(String(32))  # what changed: payment, charge, …
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # the JSON exactly as it is sent
    state: Mapped[str] = mapped_column(String(16), default=NotificationState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # every attempt, ever
    step: Mapped[int] = mapped_column(Integer, default=0)  # attempts since (re)scheduling
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AttemptOutcome(StrEnum):
    SENDING = "sending"  # started; stays so if the worker died during it
    DELIVERED = "delivered"
    RETRY = "retry"  # failed; another attempt is scheduled
    GAVE_UP = "gave-up"  # failed; no attempt is left
    INTERRUPTED = "interrupted"  # the worker died during it; the row was claimed again


class DeliveryAttempt(Base):
    """One POST to a postLink: when, what came back, how long it took."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    notification_id: Mapped[str] = mapped_column(ForeignKey("notifications.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16), default=AttemptOutcome.SENDING.value)
    http_status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text, default="")
