"""Looking up a payment by invoice (EPAY.md section 8, check-status)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from tolem.oauth.tokens import AccessToken
from tolem.payments.models import Transaction

# resultCode values of check-status (EPAY.md section 8).
FOUND = "100"
NOT_FOUND = "102"
NO_TERMINAL = "104"
OTHER_TERMINAL = "109"

RESULT_MESSAGES = {
    FOUND: "SUCCESS",
    NOT_FOUND: "Invoice not found",
    NO_TERMINAL: "Terminal absent in token",
    OTHER_TERMINAL: "Terminal does not belong to the client",
}


@dataclass(frozen=True)
class Lookup:
    result_code: str
    transaction: Transaction | None = None


# Built once: every status check runs it, and building a statement costs more than
# running it. No ORDER BY: an invoice has a payment or a few, sorted below. With
# "ORDER BY created_at" SQLite's planner walked the merchant's every payment through
# ix_transactions_merchant_created to skip a sort, instead of looking the invoice up
# (check-status slowed down as payments accumulated: BENCHMARKS.md, "Third round").
_BY_INVOICE = select(Transaction).where(
    Transaction.merchant_id == bindparam("merchant_id"),
    Transaction.invoice_id == bindparam("invoice_id"),
)


def by_invoice(session: Session, token: AccessToken, invoice_id: str) -> Lookup:
    """The newest payment of this invoice on the token's terminal, scoped to its merchant."""
    if not token.terminal_id:
        return Lookup(NO_TERMINAL)
    found = sorted(
        session.scalars(
            _BY_INVOICE, {"merchant_id": token.merchant_id, "invoice_id": invoice_id}
        ).all(),
        key=lambda tx: (tx.created_at, tx.id),
        reverse=True,  # the newest first
    )
    if not found:
        return Lookup(NOT_FOUND)
    on_terminal = [tx for tx in found if tx.terminal_id == token.terminal_id]
    if not on_terminal:
        return Lookup(OTHER_TERMINAL)
    return Lookup(FOUND, on_terminal[0])
