"""POST /payment/cryptopay and GET /public.rsa."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tolem import carddata, fields, wire
from tolem.errors import BadRequest, Unauthorized
from tolem.oauth import service as oauth
from tolem.payments import service
from tolem.payments.cryptogram import CryptogramError, decrypt
from tolem.payments.models import Transaction
from tolem.payments.schemas import CryptopayBody, parse_cryptopay
from tolem.processor.base import Card, Challenge
from tolem.runtime import Runtime, runtime

router = APIRouter(tags=["payments"])

_EMPTY_INVOICE = {"invoiceId": "", "id": "", "reference": "", "accountId": ""}


@router.get(
    "/public.rsa",
    summary="The gateway's RSA public key for cryptograms (PEM)",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}}},
)
def public_key(rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    return Response(rt.keys.public_pem, media_type="application/x-pem-file")


@router.post(
    "/payment/cryptopay",
    summary="Pay with a card cryptogram",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": CryptopayBody.model_json_schema(by_alias=True)}
            },
        }
    },
)
async def cryptopay(request: Request) -> Response:
    rt = runtime(request)  # not a dependency: see tolem.runtime.runtime
    raw = await request.body()
    # The token first: a caller without one learns that, not how its body parses.
    try:
        token = oauth.bearer(rt.sealer, request.headers.get("authorization"))
    except Unauthorized as exc:  # a payment error carries the invoice fields, 401 too
        raise Unauthorized(exc.message, code=exc.code, **invoice_of(_lenient(raw))) from None
    try:
        data = wire.parse_json_object(raw)
    except wire.BodyError as exc:
        raise BadRequest(str(exc), code=477, **_EMPTY_INVOICE) from exc
    ctx = service.PaymentContext(token=token, ip=request.client.host if request.client else "")
    order, card, card_terminal = await _prepare(rt, data)
    # On the event loop: a thread costs more than the payment's own database work
    # (BENCHMARKS.md, "Third round" and "Sixth round").
    tx, challenge = await service.pay_on_the_loop(rt, ctx, order, card, card_terminal)
    if challenge is not None:
        return wire.json_response(challenge_body(tx, challenge))
    return wire.json_response(payment_body(tx))


def _lenient(raw: bytes) -> dict[str, Any]:
    try:
        return wire.parse_json_object(raw)
    except wire.BodyError:
        return {}


async def _prepare(rt: Runtime, data: dict[str, Any]) -> tuple[service.PaymentOrder, Card, str]:
    """The order, and the card and terminal its cryptogram holds (decrypted beside the
    loop where the worker has a core to spare: tolem.payments.cryptogram.SideDecrypter)."""
    try:
        body = parse_cryptopay(data)
    except fields.FieldError as exc:
        raise BadRequest(str(exc), code=exc.code, **invoice_of(data)) from exc
    try:
        if rt.decrypter is not None:
            card, card_terminal = await rt.decrypter.decrypt(rt.keys.rsa_private, body.cryptogram)
        else:
            card, card_terminal = decrypt(rt.keys.rsa_private, body.cryptogram)
    except CryptogramError as exc:
        raise BadRequest(str(exc), code=477, **invoice_of(data)) from exc
    return body.order(), card, card_terminal


def invoice_of(data: dict[str, Any]) -> dict[str, str]:
    """The invoice fields of an error, echoed from a body that may be malformed."""

    def pick(*names: str) -> str:
        for name in names:
            value = data.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)[:64]
        return ""

    account = pick("accountId", "accountID")
    if carddata.card_number_in(account):  # refused for it (fields.free_text): not echoed
        account = ""
    return {
        "invoiceId": pick("invoiceId", "invoiceID", "InvoiceID"),
        "id": "",
        "reference": "",
        "accountId": account,
    }


def challenge_body(tx: Transaction, challenge: Challenge) -> dict[str, Any]:
    """3-D Secure needed (EPAY.md section 5): HTTP 200, no final status yet."""
    return {
        "id": tx.id,
        "accountId": tx.account_id,
        "amount": tx.amount,
        "amountBonus": 0,
        "currency": tx.currency,
        "description": tx.description,
        "email": tx.email,
        "invoiceID": tx.invoice_id,
        "invoiceIdAlt": tx.invoice_id_alt,
        "language": tx.language,
        "phone": tx.phone,
        "reference": "",
        "intReference": "",
        "cardID": "",
        "secure3D": {"paReq": challenge.pa_req, "md": challenge.md, "action": challenge.action},
    }


def payment_body(tx: Transaction) -> dict[str, Any]:
    """A successful payment as ePay answers it (EPAY.md section 5)."""
    return {
        "id": tx.id,
        "amount": tx.amount,
        "amountBonus": 0,
        "currency": tx.currency,
        "invoiceID": tx.invoice_id,
        "invoiceIdAlt": tx.invoice_id_alt,
        "accountID": tx.account_id,
        "phone": tx.phone,
        "email": tx.email,
        "description": tx.description,
        "reference": tx.reference,
        "intReference": tx.int_reference,
        "secure3D": None,
        "cardID": tx.card_id,
        "language": tx.language,
        "fee": 0,
        "code": 0,
        "status": tx.status,
        "approvalCode": tx.approval_code,
        "cardMask": tx.card_mask,
        "cardType": tx.card_type,
        "issuer": tx.issuer,
    }
