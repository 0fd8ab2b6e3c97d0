"""Completing 3-D Secure payments: /payment/confirm, the hosted TermUrl, and expiry.

A confirmation changes a payment only when the acquirer accepts the PaRes. Everything
refused before that (another merchant's token, a finished payment, a swapped MD, a
forged or foreign PaRes) leaves the payment waiting, untouched.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session

from tolem import reasons
from tolem.db.base import utcnow
from tolem.errors import BadRequest
from tolem.merchants.models import Terminal
from tolem.oauth.tokens import AccessToken
from tolem.payments import service as payments
from tolem.payments.models import Status, Transaction, TransactionEvent
from tolem.processor.base import AuthenticationRefused, ProcessorResult
from tolem.runtime import Runtime

log = logging.getLogger("tolem.secure3d")

EXPIRED = ProcessorResult(approved=False, reason_code=473)


def _refuse(message: str, code: int, tx: Transaction | None = None) -> BadRequest:
    return BadRequest(
        message,
        code=code,
        invoiceId=tx.invoice_id if tx else "",
        id=tx.id if tx else "",
        reference="",
        accountId=tx.account_id if tx else "",
    )


def find(session: Session, token: AccessToken, *, tx_id: str = "", md: str = "") -> Transaction:
    """The merchant's payment by id or by MD; another merchant's is 'not found'."""
    query = select(Transaction).where(Transaction.merchant_id == token.merchant_id)
    query = (
        query.where(Transaction.id == tx_id)
        if tx_id
        else query.where(Transaction.three_ds_md == md)
    )
    tx = session.scalars(query).first() if (tx_id or md) else None
    if tx is None:
        raise _refuse("transaction not found", 522)
    if token.terminal_id and tx.terminal_id != token.terminal_id:
        raise _refuse("transaction not found", 522)
    if token.invoice_id and tx.invoice_id != token.invoice_id:  # a token for another order
        raise _refuse("transaction not found", 522)
    return tx


def confirm(rt: Runtime, token: AccessToken, *, tx_id: str, pa_res: str, md: str) -> Transaction:
    """Confirm the token's merchant's payment ``tx_id`` with the ACS's answer."""
    with rt.db.read() as session:
        tx = find(session, token, tx_id=tx_id, md=md)
    return complete(rt, tx, pa_res=pa_res, md=md)


def complete(rt: Runtime, tx: Transaction, *, pa_res: str, md: str) -> Transaction:
    """Complete a payment the caller has already found (and scoped) with the ACS's answer."""
    with rt.db.read() as session:
        terminal = session.get(Terminal, tx.terminal_id)
    assert terminal is not None
    if tx.status != Status.NEW.value or not tx.three_ds_md:
        raise _refuse("the transaction is not waiting for 3-D Secure", 469, tx)
    if tx.three_ds_expires_at is not None and tx.three_ds_expires_at <= utcnow():
        with rt.db.write() as session:
            payments.finish(session, tx, EXPIRED, capture=not terminal.two_step)
        raise _refuse("3-D Secure time ran out", 473, tx)
    if md != tx.three_ds_md:
        raise _refuse("MD does not belong to this transaction", 473, tx)
    try:
        result = rt.acquirer_for(terminal).complete_authentication(tx.id, pa_res, md)
    except AuthenticationRefused as exc:
        log.warning("3-D Secure answer refused for %s: %s", tx.id, exc.message)
        raise _refuse(exc.message, exc.reason_code, tx) from None
    with rt.db.write() as session:
        capture = _asked_to_capture(session, tx, terminal)
        return payments.finish(session, tx, result, capture=capture, secure=True)


def _asked_to_capture(session: Session, tx: Transaction, terminal: Terminal) -> bool:
    """What the acquirer was asked when the payment began (the challenge's event says),
    not the terminal's flow now: the cabinet may have changed it meanwhile."""
    asked = session.scalars(
        select(TransactionEvent.detail).where(
            TransactionEvent.transaction_id == tx.id, TransactionEvent.kind == "3ds-challenge"
        )
    ).first()
    for capture, detail in payments.CHALLENGE_CAPTURE.items():
        if asked == detail:
            return capture
    return payments.captures(tx, terminal)  # a challenge recorded before this was kept


def expire_stale(rt: Runtime, now: datetime | None = None, limit: int = 200) -> int:
    """Fail payments whose 3-D Secure time ran out (reason 473). Returns how many."""
    now = now or utcnow()
    with rt.db.read() as session:
        stale = session.execute(
            select(Transaction, Terminal.two_step)
            .join(Terminal, Terminal.id == Transaction.terminal_id)
            .where(
                Transaction.status == Status.NEW.value,
                Transaction.three_ds_expires_at.is_not(None),
                Transaction.three_ds_expires_at <= now,
            )
            .limit(limit)
        ).all()
    expired = 0
    for tx, two_step in stale:
        with rt.db.write() as session:
            if payments.finish(session, tx, EXPIRED, capture=not two_step).reason_code == 473:
                expired += 1
    return expired


def result_url(rt: Runtime, tx: Transaction) -> str:
    """Where the cardholder goes next (EPAY.md section 6, step 4)."""
    base = rt.settings.effective_public_base_url
    if payments.succeeded(tx):
        query = {
            "amount": _plain(tx.amount),
            "currency": tx.currency,
            "invoiceID": tx.invoice_id,
            "accountID": tx.account_id,
            "description": tx.description,
            "reference": tx.reference,
            "language": tx.language,
            "cardid": tx.card_id,
        }
        return f"{base}/payform/success.html?{urlencode(query)}"
    return error_url(rt, tx.invoice_id, tx.reason_code, tx.language)


def error_url(rt: Runtime, invoice_id: str, code: int, language: str, *, key: str = "code") -> str:
    query = {"invoiceID": invoice_id, key: str(code), "message": reasons.message(code)}
    if language:
        query["language"] = language
    return f"{rt.settings.effective_public_base_url}/payform/?{urlencode(query)}"


def _plain(amount: Decimal) -> str:
    return str(amount.quantize(Decimal(1))) if amount == amount.to_integral_value() else str(amount)
