"""GET /check-status/payment/transaction/{invoiceId}."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem import wire
from tolem.oauth import service as oauth
from tolem.operations import service
from tolem.payments.models import Transaction
from tolem.runtime import Runtime, runtime

router = APIRouter(tags=["status"])


@router.get(
    "/check-status/payment/transaction/{invoice_id}",
    summary="The status of a payment by its invoice",
)
async def check_status(
    invoice_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    token = oauth.bearer(rt.sealer, request.headers.get("authorization"))

    def lookup() -> service.Lookup:
        with rt.db.read() as session:
            # A NUL (or a lone surrogate) is no invoice, and PostgreSQL refuses it outright.
            clean = "" if wire.text_problem(invoice_id) else invoice_id[:64]
            return service.by_invoice(session, token, clean)

    found = await run_in_threadpool(lookup)
    body: dict[str, Any] = {
        "resultCode": found.result_code,
        "resultMessage": service.RESULT_MESSAGES[found.result_code],
    }
    if found.transaction is None:
        return wire.json_response(body, status_code=400)
    return wire.json_response(body | {"transaction": transaction_body(found.transaction)})


def transaction_body(tx: Transaction) -> dict[str, Any]:
    """The status API's transaction object (EPAY.md section 8)."""
    return {
        "id": tx.id,
        "createdDate": tx.created_at.isoformat(),
        "invoiceID": tx.invoice_id,
        "amount": tx.amount,
        "amountBonus": 0,
        "payoutAmount": tx.amount_charged - tx.amount_refunded,
        "orgAmount": tx.amount,
        "currency": tx.currency,
        "terminal": tx.terminal_id,
        "terminalID": tx.terminal_id,
        "approvalCode": tx.approval_code,
        "data": tx.data,
        "accountID": tx.account_id,
        "description": tx.description,
        "language": tx.language,
        "cardMask": tx.card_mask,
        "cardType": tx.card_type,
        "issuer": tx.issuer,
        "cardID": tx.card_id,
        "reference": tx.reference,
        "reason": tx.reason,
        "reasonCode": tx.reason_code,
        "intReference": tx.int_reference,
        "secure": tx.secure,
        "secureDetails": "",
        "statusID": tx.status,
        "statusName": tx.status,
        "name": tx.payer_name,
        "email": tx.email,
        "phone": tx.phone,
        "ip": tx.ip,
        "ipCountry": "",
        "ipCity": "",
        "ipRegion": "",
        "ipDistrict": "",
        "ipLatitude": 0,
        "ipLongitude": 0,
    }
