"""The sandbox acquirer: decides like a bank would and keeps a ledger.

Decision order for a card: a published test card (its listed expiry/CVC pairs), else
Luhn (471), a trigger card (its code), expiry format (457) and date (478), CVC format
(477), then approve. The ledger has one row per idempotency reference, so a repeated
call returns the first answer and never moves money twice.
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Boolean, Integer, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from tolem import carddata
from tolem.db.base import Base, Money, UTCDateTime, utcnow
from tolem.db.engine import Database
from tolem.processor import cards
from tolem.processor.base import AuthorizationRequest, Card, ProcessorResult

ISSUERS = {
    "440563": "JSC Halyk Bank",
    "552204": "JSC Halyk Bank",
    "377514": "JSC Halyk Bank",
    "400303": "JSC Halyk Bank",
    "557834": "JSC Halyk Bank",
}


class LedgerEntry(Base):
    """What the simulated acquirer has done, keyed by tolem's idempotency reference."""

    __tablename__ = "simulator_ledger"

    reference: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # authorize, sale, capture, void, refund
    auth_reference: Mapped[str] = mapped_column(String(64), default="", index=True)
    amount: Mapped[Decimal] = mapped_column(Money())
    approved: Mapped[bool] = mapped_column(Boolean)
    reason_code: Mapped[int] = mapped_column(Integer)
    rrn: Mapped[str] = mapped_column(String(12), default="")
    approval_code: Mapped[str] = mapped_column(String(6), default="")
    int_reference: Mapped[str] = mapped_column(String(32), default="")
    issuer: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def result(self) -> ProcessorResult:
        return ProcessorResult(
            approved=self.approved,
            reason_code=self.reason_code,
            rrn=self.rrn,
            approval_code=self.approval_code,
            int_reference=self.int_reference,
            issuer=self.issuer,
        )


def decide(card: Card, today: datetime | None = None) -> int:
    """The reason code the simulator answers for this card; 0 approves."""
    listed = cards.published(card.pan)
    expiry = f"{card.exp_month:02d}/{card.exp_year % 100:02d}"
    if listed:
        same_expiry = [c for c in listed if c.expiry == expiry]
        if not same_expiry:
            return cards.WRONG_EXPIRY
        for entry in same_expiry:
            if entry.cvc == _pad_cvc(card):
                return entry.reason_code
        return cards.WRONG_CVC
    if not carddata.luhn_ok(card.pan):
        return 471
    code = cards.trigger_code(card.pan)
    if code is not None:
        return code
    if not 1 <= card.exp_month <= 12:
        return 457
    now = today or datetime.now(UTC)
    if (card.exp_year, card.exp_month) < (now.year, now.month):
        return 478
    cvc = _pad_cvc(card)
    if not cvc.isdigit() or len(cvc) != carddata.cvc_length(card.pan):
        return 477
    return 0


def _pad_cvc(card: Card) -> str:
    # A known client bug sends the CVC as a number, dropping leading zeros.
    return card.cvc.zfill(carddata.cvc_length(card.pan))


def rrn(now: datetime | None = None) -> str:
    """A retrieval reference number shaped like ePay's: YDDDHH + six digits."""
    now = now or datetime.now(UTC)
    return f"{now.year % 10}{now.timetuple().tm_yday:03d}{now.hour:02d}" + _digits(6)


def _digits(n: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(n))


def _int_reference() -> str:
    return "".join(secrets.choice(string.digits + string.ascii_uppercase) for _ in range(16))


class Simulator:
    """The :class:`~tolem.processor.base.Acquirer` of sandbox mode and test terminals."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def authorize(self, request: AuthorizationRequest) -> ProcessorResult:
        code = decide(request.card)
        approved = code == 0
        entry = LedgerEntry(
            reference=request.reference,
            kind="sale" if request.capture else "authorize",
            amount=request.amount,
            approved=approved,
            reason_code=code,
            rrn=rrn() if approved else "",
            approval_code=_digits(6) if approved else "",
            int_reference=_int_reference() if approved else "",
            issuer=ISSUERS.get(request.card.pan[:6], ""),
        )
        return self._record(entry)

    def capture(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult:
        return self._operation(reference, "capture", auth_reference, amount)

    def void(self, reference: str, auth_reference: str) -> ProcessorResult:
        return self._operation(reference, "void", auth_reference, Decimal("0.00"))

    def refund(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult:
        return self._operation(reference, "refund", auth_reference, amount)

    def inquire(self, reference: str) -> ProcessorResult | None:
        with self._db.read() as session:
            entry = session.get(LedgerEntry, reference)
            return entry.result() if entry is not None else None

    def _operation(
        self, reference: str, kind: str, auth_reference: str, amount: Decimal
    ) -> ProcessorResult:
        with self._db.read() as session:
            auth = session.get(LedgerEntry, auth_reference)
            known = auth is not None and auth.approved
        entry = LedgerEntry(
            reference=reference,
            kind=kind,
            auth_reference=auth_reference,
            amount=amount,
            approved=known,
            reason_code=0 if known else 522,  # 522: record not found
            rrn=rrn() if known else "",
            approval_code=_digits(6) if known else "",
        )
        return self._record(entry)

    def _record(self, entry: LedgerEntry) -> ProcessorResult:
        reference = entry.reference
        with self._db.read() as session:
            existing = session.get(LedgerEntry, reference)
            if existing is not None:
                return existing.result()
        try:
            with self._db.write() as session:
                session.add(entry)
                result = entry.result()
        except IntegrityError:  # a concurrent call with the same reference won
            with self._db.read() as session:
                winner = session.scalars(
                    select(LedgerEntry).where(LedgerEntry.reference == reference)
                ).one()
                return winner.result()
        return result
