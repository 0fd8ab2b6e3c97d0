"""Transactions and their history."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    column,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tolem.db.base import Base, Money, UTCDateTime, new_id, utcnow


class Status(StrEnum):
    """ePay status names (EPAY.md section 11)."""

    NEW = "NEW"  # created, waiting for the processor or for 3-D Secure
    AUTH = "AUTH"  # funds blocked (two-step terminals)
    CHARGE = "CHARGE"  # paid
    CANCEL = "CANCEL"
    REFUND = "REFUND"
    FAILED = "FAILED"  # declined by the processor
    REJECT = "REJECT"
    THREE_DS_FAILED = "3D"
    VERIFIED = "VERIFIED"

    @property
    def is_final(self) -> bool:
        return self is not Status.NEW

    @property
    def succeeded(self) -> bool:
        return self in (Status.AUTH, Status.CHARGE, Status.VERIFIED)


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        # ePay: an invoice is unique per terminal, and so are its last six digits.
        # invoice_claim holds those six digits while the invoice is taken and is
        # cleared when the attempt is declined, so the shop may retry the order.
        # NULLs never collide, on SQLite and PostgreSQL alike.
        UniqueConstraint("terminal_id", "invoice_claim"),
        Index("ix_transactions_terminal_invoice", "terminal_id", "invoice_id"),
        # The cabinet's pages and POST /operations: one merchant's payments, newest
        # first, read in keyset pages.
        Index("ix_transactions_merchant_created", "merchant_id", "created_at", "id"),
        # The cabinet list's filters (migration 0009): (merchant, value, created_at, id)
        # reads a filtered page newest first from the index. The card's expressions
        # follow ePay's mask "440563...5096"; tolem.cabinet.web queries the same ones.
        Index("ix_transactions_merchant_status", "merchant_id", "status", "created_at", "id"),
        Index("ix_transactions_merchant_account", "merchant_id", "account_id", "created_at", "id"),
        Index("ix_transactions_merchant_amount", "merchant_id", "amount", "created_at", "id"),
        Index(
            "ix_transactions_merchant_card_first6",
            "merchant_id",
            func.substr(column("card_mask"), 1, 6),
            "created_at",
            "id",
        ),
        Index(
            "ix_transactions_merchant_card_last4",
            "merchant_id",
            func.substr(column("card_mask"), 10),
            "created_at",
            "id",
        ),
        Index("ix_transactions_merchant_invoice", "merchant_id", "invoice_id"),
        # Velocity limits (tolem.velocity, migration 0011): one client address's and one
        # card's payments of a window at one merchant. The card's index replaced the
        # fingerprint's own, which no query used.
        Index("ix_transactions_merchant_ip", "merchant_id", "ip", "created_at"),
        Index("ix_transactions_merchant_card", "merchant_id", "card_fingerprint", "created_at"),
        # The recovery sweep's payments left NEW (migration 0013): a partial index holds
        # only those, so the sweep reads a handful of rows, not every payment.
        Index(
            "ix_transactions_new",
            "created_at",
            sqlite_where=text("status = 'NEW'"),
            postgresql_where=text("status = 'NEW'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # No index of its own: the indexes that begin with merchant_id serve it (0012).
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.id"))
    invoice_id: Mapped[str] = mapped_column(String(15))
    invoice_claim: Mapped[str | None] = mapped_column(String(6))
    invoice_id_alt: Mapped[str] = mapped_column(String(15), default="")
    amount: Mapped[Decimal] = mapped_column(Money())
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default=Status.NEW.value)
    reason_code: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(String(200), default="")
    payment_type: Mapped[str] = mapped_column(String(32), default="card")

    description: Mapped[str] = mapped_column(Text, default="")
    account_id: Mapped[str] = mapped_column(String(100), default="")
    email: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(50), default="")
    payer_name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str] = mapped_column(String(8), default="rus")
    data: Mapped[str] = mapped_column(Text, default="")
    ip: Mapped[str] = mapped_column(String(64), default="")

    post_link: Mapped[str] = mapped_column(Text, default="")
    failure_post_link: Mapped[str] = mapped_column(Text, default="")
    # Where the hosted page sends the cardholder afterwards (EPAY.md section 9).
    back_link: Mapped[str] = mapped_column(Text, default="", server_default="")
    failure_back_link: Mapped[str] = mapped_column(Text, default="", server_default="")
    secret_hash: Mapped[str] = mapped_column(Text, default="")

    # Card: never the PAN, never the CVC.
    card_mask: Mapped[str] = mapped_column(String(32), default="")
    card_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    card_type: Mapped[str] = mapped_column(String(16), default="")
    issuer: Mapped[str] = mapped_column(String(100), default="")
    card_id: Mapped[str] = mapped_column(String(36), default="")

    # Processor references.
    reference: Mapped[str] = mapped_column(String(12), default="")
    int_reference: Mapped[str] = mapped_column(String(32), default="")
    approval_code: Mapped[str] = mapped_column(String(6), default="")
    secure: Mapped[bool] = mapped_column(Boolean, default=False)
    # 3-D Secure: while NEW with an MD, the payment waits for the cardholder's answer,
    # until three_ds_expires_at (then it fails with 473).
    three_ds_md: Mapped[str | None] = mapped_column(String(64), unique=True)
    # expire_stale finds these through ix_transactions_new (migration 0014).
    three_ds_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The challenge itself, so that the hosted page can send the cardholder to the ACS
    # again after a reload (both are public: they travel through the browser anyway).
    three_ds_pa_req: Mapped[str] = mapped_column(Text, default="", server_default="")
    three_ds_action: Mapped[str] = mapped_column(Text, default="", server_default="")

    amount_charged: Mapped[Decimal] = mapped_column(Money(), default=Decimal("0.00"))
    amount_refunded: Mapped[Decimal] = mapped_column(Money(), default=Decimal("0.00"))
    # Refunds sent to the acquirer and not answered yet: reserved, so that refunds
    # racing each other never add up to more than was charged.
    amount_refund_pending: Mapped[Decimal] = mapped_column(
        Money(), default=Decimal("0.00"), server_default="0"
    )
    # The charge or cancel under way, if any: only one of them may run at a time.
    operation_lock: Mapped[str | None] = mapped_column(String(36))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TransactionEvent(Base):
    """One line of a transaction's history: every state change and operation."""

    __tablename__ = "transaction_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Money())
    reason_code: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")


class Operation(Base):
    """A charge, cancel or refund of a transaction, and what the acquirer said."""

    __tablename__ = "operations"
    # The dashboard's refunds of a day (migration 0010).
    __table_args__ = (
        Index("ix_operations_kind_finished", "kind", "finished_at"),
        # The recovery sweep's pending operations (migration 0013).
        Index(
            "ix_operations_pending",
            "created_at",
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # charge, cancel, refund
    amount: Mapped[Decimal] = mapped_column(Money())
    external_id: Mapped[str] = mapped_column(String(100), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending, done, declined
    reason_code: Mapped[int] = mapped_column(Integer, default=0)
    reference: Mapped[str] = mapped_column(String(12), default="")
    # Who asked for it: "api", or "cabinet:<email>" for a cabinet user.
    performed_by: Mapped[str] = mapped_column(String(300), default="api", server_default="api")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
