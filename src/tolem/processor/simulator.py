"""The sandbox acquirer: decides like a bank would and keeps a ledger.

Decision order for a card: a published test card (its listed expiry/CVC pairs), else
Luhn (471), a trigger or 3-D Secure card (its code), expiry format (457) and date
(478), CVC format (477), then approve.

3-D Secure: the simulator is the issuer's ACS too. A payment that needs it gets a
challenge (PaReq, MD, the ACS address) and a pending ledger row holding the decision;
the ACS pages (tolem.secure3d.endpoints) show the one-time code and seal the cardholder's
answer as a PaRes; ``complete_authentication`` opens it and settles the payment.

The ledger has one row per idempotency reference, so a repeated call returns the
first answer and never moves money twice.
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from decimal import Decimal
from typing import cast

from sqlalchemy import Boolean, Integer, String, Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tolem import carddata
from tolem.db.base import Base, Money, UTCDateTime, insert_row, new_row, utcnow
from tolem.db.direct import Direct
from tolem.db.engine import Database
from tolem.processor import cards
from tolem.processor.base import (
    AuthenticationRefused,
    AuthorizationRequest,
    Card,
    Challenge,
    ProcessorResult,
    Secure3DPolicy,
)
from tolem.secure3d.codec import MessageSealer, SealError

#: Wrong one-time codes before the ACS gives up with 499.
OTP_ATTEMPTS = 3

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
    # authorize, sale, verify, capture, void, refund; 3ds-<kind> while a challenge is pending
    kind: Mapped[str] = mapped_column(String(16))
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


_INSERT_LEDGER = Direct(insert(cast(Table, LedgerEntry.__table__)))


class AcsSession(Base):
    """The simulated issuer's record of one 3-D Secure challenge."""

    __tablename__ = "simulator_acs"

    md: Mapped[str] = mapped_column(String(64), primary_key=True)
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    pa_req: Mapped[str] = mapped_column(String(4000))
    otp: Mapped[str] = mapped_column(String(6))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # pending, then Y (authenticated) or N (failed, with reason_code)
    outcome: Mapped[str] = mapped_column(String(8), default="pending")
    reason_code: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def needs_3ds(card: Card, policy: str) -> bool:
    if policy == Secure3DPolicy.ALWAYS:
        return True
    if policy == Secure3DPolicy.NEVER:
        return False
    return cards.three_ds_code(card.pan) is not None


def decide(card: Card, today: datetime | None = None) -> int:
    """The reason code the simulator answers for this card; 0 approves."""
    listed = cards.published(card.pan)
    expiry = f"{card.exp_month:02d}/{card.exp_year % 100:02d}"
    if listed:
        same_expiry = [c for c in listed if c.expiry == expiry]
        if not same_expiry:
            return cards.WRONG_EXPIRY
        if not card.cvc:  # a saved card is charged without its CVC
            return same_expiry[0].reason_code
        for entry in same_expiry:
            if entry.cvc == _pad_cvc(card):
                return entry.reason_code
        return cards.WRONG_CVC
    if not carddata.luhn_ok(card.pan):
        return 471
    code = cards.trigger_code(card.pan)
    if code is None:
        code = cards.three_ds_code(card.pan)
    if code is not None:
        return code
    if not 1 <= card.exp_month <= 12:
        return 457
    now = today or datetime.now(UTC)
    if (card.exp_year, card.exp_month) < (now.year, now.month):
        return 478
    cvc = _pad_cvc(card)
    if card.cvc and (not cvc.isdigit() or len(cvc) != carddata.cvc_length(card.pan)):
        return 477
    return 0


def _kind(request: AuthorizationRequest) -> str:
    if request.verify:
        return "verify"
    return "sale" if request.capture else "authorize"


def _pad_cvc(card: Card) -> str:
    # A known client bug sends the CVC as a number, dropping leading zeros.
    return card.cvc.zfill(carddata.cvc_length(card.pan))


def rrn(now: datetime | None = None, serial: int | None = None) -> str:
    """A retrieval reference number shaped like ePay's: YDDDHH + six digits."""
    now = now or datetime.now(UTC)
    if serial is None:
        serial = secrets.randbelow(10**6)
    return f"{now.year % 10}{now.timetuple().tm_yday:03d}{now.hour:02d}{serial % 10**6:06d}"


# Few draws from the system's random source (one per settled call, see _settled), not
# one per character: each draw is a system call that lets go of the GIL, and under load
# every one of them means waiting for it again.


def _digits(n: int) -> str:
    return f"{secrets.randbelow(10**n):0{n}d}"


_BASE36 = string.digits + string.ascii_uppercase


def _int_reference(value: int | None = None) -> str:
    if value is None:
        value = secrets.randbelow(36**16)
    chars = []
    for _ in range(16):
        value, digit = divmod(value, 36)
        chars.append(_BASE36[digit])
    return "".join(chars)


def _md() -> str:
    """Merchant data shaped like the live one: ``271710719-E54F6D8F865285D4``."""
    return f"{_digits(9)}-{secrets.token_hex(8).upper()}"


def _authorization(session: Session, reference: str) -> LedgerEntry | None:
    """The settled authorization of a payment: after 3-D Secure, its second row."""
    return session.get(LedgerEntry, f"{reference}/3ds") or session.get(LedgerEntry, reference)


def _authorization_entry(request: AuthorizationRequest, code: int) -> LedgerEntry:
    """The ledger row of a payment decided without 3-D Secure."""
    return _settled(
        request.reference,
        _kind(request),
        request.amount,
        code,
        issuer=ISSUERS.get(request.card.pan[:6], ""),
    )


def _settled(
    reference: str,
    kind: str,
    amount: Decimal,
    code: int,
    *,
    issuer: str = "",
    auth_reference: str = "",
) -> LedgerEntry:
    """A ledger row for a settled call; an approval gets its RRN and approval code."""
    approved = code == 0
    # One draw for the three values: 20 bytes give the RRN's six digits, the approval
    # code's six and intReference's sixteen base-36 characters, each close to uniform.
    draw = int.from_bytes(secrets.token_bytes(20)) if approved else 0
    entry, _row = new_row(
        LedgerEntry,
        reference=reference,
        kind=kind,
        auth_reference=auth_reference,
        amount=amount,
        approved=approved,
        reason_code=code,
        rrn=rrn(serial=draw % 10**6) if approved else "",
        approval_code=f"{draw // 10**6 % 10**6:06d}" if approved else "",
        int_reference=_int_reference(draw // 10**12 % 36**16) if approved else "",
        issuer=issuer,
    )
    return entry


class AcsAnswer:
    """What the ACS page does next: ask again, or post a PaRes to the TermUrl."""

    def __init__(self, pa_res: str | None, attempts_left: int) -> None:
        self.pa_res = pa_res
        self.attempts_left = attempts_left


class Simulator:
    """The :class:`~tolem.processor.base.Acquirer` of sandbox mode and test terminals."""

    def __init__(
        self, db: Database, *, root_key: bytes, acs_url: str, challenge_seconds: int = 900
    ) -> None:
        self._db = db
        # How long a cardholder has to answer, and a PaReq or PaRes stays valid.
        self._challenge_seconds = challenge_seconds
        self._pa_req = MessageSealer(root_key, "pareq")
        self._pa_res = MessageSealer(root_key, "pares")
        self.acs_url = acs_url

    def authorize(self, request: AuthorizationRequest) -> ProcessorResult:
        code = decide(request.card)
        if needs_3ds(request.card, request.secure3d):
            return self._challenge(request, code)
        return self._record(_authorization_entry(request, code))

    def authorize_within(self, session: Session, request: AuthorizationRequest) -> ProcessorResult:
        """:meth:`authorize` for a new reference, written in the caller's transaction.

        The simulator keeps its ledger in the gateway's database, so a payment on a test
        terminal can take its invoice, be decided and record its outcome in one
        transaction: all of it is kept, or none (tolem.payments.service.pay). The
        reference must be new to the ledger (a payment's own id, claimed in ``session``);
        a repeated one fails the transaction with an IntegrityError.
        """
        code = decide(request.card)
        if needs_3ds(request.card, request.secure3d):
            pending, acs = self._challenge_rows(request, code)
            session.add_all([pending, acs])
            return self._challenge_result(acs)
        entry = _authorization_entry(request, code)
        _INSERT_LEDGER.execute(session, insert_row(entry))
        return entry.result()

    def _challenge(self, request: AuthorizationRequest, code: int) -> ProcessorResult:
        """Hold the decision until the cardholder has answered the issuer's challenge."""
        with self._db.read() as session:
            existing = session.scalars(
                select(AcsSession).where(AcsSession.reference == request.reference)
            ).first()
            if existing is not None:
                return self._challenge_result(existing)
        pending, acs = self._challenge_rows(request, code)
        try:
            with self._db.write() as session:
                session.add_all([pending, acs])
        except IntegrityError:  # the same reference raced us: answer with its challenge
            with self._db.read() as session:
                acs = session.scalars(
                    select(AcsSession).where(AcsSession.reference == request.reference)
                ).one()
        return self._challenge_result(acs)

    def _challenge_rows(
        self, request: AuthorizationRequest, code: int
    ) -> tuple[LedgerEntry, AcsSession]:
        """The pending ledger row (holding the decision) and the ACS's challenge."""
        md = _md()
        pa_req = self._pa_req.seal(
            {
                "md": md,
                "ref": request.reference,
                "amount": str(request.amount),
                "currency": request.currency,
                "merchant": request.merchant_name,
                "mask": carddata.mask(request.card.pan),
                "lang": request.language,
            },
            ttl=self._challenge_seconds,
        )
        acs = AcsSession(md=md, reference=request.reference, pa_req=pa_req, otp=_digits(6))
        pending = LedgerEntry(
            reference=request.reference,
            kind=f"3ds-{_kind(request)}",
            amount=request.amount,
            approved=False,
            reason_code=code,  # the decision, applied once the cardholder has passed
            issuer=ISSUERS.get(request.card.pan[:6], ""),
        )
        return pending, acs

    def _challenge_result(self, acs: AcsSession) -> ProcessorResult:
        return ProcessorResult(
            approved=False,
            reason_code=0,
            challenge=Challenge(pa_req=acs.pa_req, md=acs.md, action=self.acs_url),
        )

    # --- the issuer's ACS -------------------------------------------------------------

    def acs_view(self, pa_req: str) -> tuple[dict[str, str], AcsSession]:
        """The challenge a PaReq stands for, or SealError if it is not ours or too old."""
        claims = self._pa_req.open(pa_req)
        with self._db.read() as session:
            acs = session.get(AcsSession, str(claims.get("md", "")))
        if acs is None or acs.reference != claims.get("ref"):
            raise SealError("unknown challenge")
        return {k: str(v) for k, v in claims.items()}, acs

    def acs_answer(self, md: str, code: str | None) -> AcsAnswer:
        """The cardholder's answer: a one-time code, or None to fail on purpose."""
        with self._db.write() as session:
            acs = session.get(AcsSession, md, with_for_update=True)
            if acs is None:
                raise SealError("unknown challenge")
            if acs.outcome == "pending":
                if code is None:
                    acs.outcome, acs.reason_code = "N", 473
                elif secrets.compare_digest(code.strip(), acs.otp):
                    acs.outcome = "Y"
                else:
                    acs.attempts += 1
                    if acs.attempts >= OTP_ATTEMPTS:
                        acs.outcome, acs.reason_code = "N", 499
                    else:
                        return AcsAnswer(None, OTP_ATTEMPTS - acs.attempts)
            claims = {"md": acs.md, "ref": acs.reference, "st": acs.outcome, "rc": acs.reason_code}
        return AcsAnswer(self._pa_res.seal(claims, ttl=self._challenge_seconds), 0)

    def complete_authentication(self, reference: str, pa_res: str, md: str) -> ProcessorResult:
        try:
            claims = self._pa_res.open(pa_res)
        except SealError as exc:
            raise AuthenticationRefused(473, f"PaRes refused: {exc}") from exc
        if claims.get("ref") != reference:
            raise AuthenticationRefused(473, "PaRes refused: it belongs to another payment")
        if claims.get("md") != md:
            raise AuthenticationRefused(473, "PaRes refused: MD does not match it")
        with self._db.read() as session:
            pending = session.get(LedgerEntry, reference)
            final = session.get(LedgerEntry, f"{reference}/3ds")
        if final is not None:
            return final.result()
        if pending is None or not pending.kind.startswith("3ds"):
            raise AuthenticationRefused(473, "PaRes refused: no challenge for this payment")
        passed = claims.get("st") == "Y"
        code = pending.reason_code if passed else int(claims.get("rc") or 473)
        entry = _settled(
            f"{reference}/3ds",
            pending.kind.removeprefix("3ds-"),
            pending.amount,
            code,
            issuer=pending.issuer,
            auth_reference=reference,
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
            entry = _authorization(session, reference)
            return entry.result() if entry is not None else None

    def _operation(
        self, reference: str, kind: str, auth_reference: str, amount: Decimal
    ) -> ProcessorResult:
        with self._db.read() as session:
            auth = _authorization(session, auth_reference)
            known = auth is not None and auth.approved
        code = 0 if known else 522  # 522: record not found
        entry = _settled(reference, kind, amount, code, auth_reference=auth_reference)
        return self._record(entry)

    def _record(self, entry: LedgerEntry) -> ProcessorResult:
        """Keep the entry, or return the answer already kept under its reference.

        The insert goes first: the reference is the primary key, so a repeated call
        fails it and reads the first answer, and a new one costs no read beforehand.
        """
        reference = entry.reference
        try:
            with self._db.write() as session:
                _INSERT_LEDGER.execute(session, insert_row(entry))
                result = entry.result()
        except IntegrityError:  # a repeated call, or a concurrent one that won
            with self._db.read() as session:
                winner = session.scalars(
                    select(LedgerEntry).where(LedgerEntry.reference == reference)
                ).one()
                return winner.result()
        return result
