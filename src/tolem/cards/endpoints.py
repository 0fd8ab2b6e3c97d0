"""Saved cards over HTTP (EPAY.md section 7).

POST /payments/cards/auth          pay with a saved card (paymentType "cardId")
GET  /cards/{accountId}            the customer's saved cards (PascalCase, as ePay)
POST /card/deactivate/{cardID}     stop using a card

A saved card sealed under an earlier card key (``TOLEM_CARD_PREVIOUS_KEYS``) is
re-wrapped under the current one when it pays.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem import fields, wire
from tolem.cards import service
from tolem.cards.models import SavedCard
from tolem.cards.vault import SealedCard, VaultError
from tolem.errors import BadRequest, Unauthorized
from tolem.oauth import service as oauth
from tolem.oauth.tokens import AccessToken
from tolem.payments import service as payments
from tolem.payments.endpoints import challenge_body, invoice_of, payment_body
from tolem.payments.models import Transaction
from tolem.payments.schemas import parse_saved_card
from tolem.processor.base import Challenge
from tolem.runtime import Runtime, runtime

log = logging.getLogger("tolem.cards")
router = APIRouter(tags=["saved cards"])

#: ePay's answer when a customer has no saved card.
NO_CARDS = 1373


@router.post("/payments/cards/auth", summary="Pay with a saved card (cardId)")
async def pay_with_card(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    token = oauth.bearer(rt.sealer, request.headers.get("authorization"))
    try:
        data = wire.parse_json_object(await request.body())
    except wire.BodyError as exc:
        raise BadRequest(str(exc), code=477, **invoice_of({})) from exc
    ip = request.client.host if request.client else ""
    tx, challenge = await run_in_threadpool(_pay, rt, token, data, ip)
    if challenge is not None:
        return wire.json_response(challenge_body(tx, challenge))
    return wire.json_response(payment_body(tx))


def _pay(
    rt: Runtime, token: AccessToken, data: dict[str, Any], ip: str
) -> tuple[Transaction, Challenge | None]:
    try:
        body = parse_saved_card(data)
    except fields.FieldError as exc:
        raise BadRequest(str(exc), code=exc.code, **invoice_of(data)) from exc
    if not body.account_id:
        raise BadRequest("accountId: required with a saved card", code=477, **invoice_of(data))
    with rt.db.read() as session:
        saved = service.active_card(session, token.merchant_id, body.card_id)
    if (
        saved is None
        or saved.account_id != body.account_id  # the customer's own card only
        or (token.terminal_id and saved.terminal_id != token.terminal_id)
    ):
        raise BadRequest("card not found", code=NO_CARDS, **invoice_of(data))
    try:
        card = rt.vault.open(SealedCard(saved.key_id, saved.sealed), bound_to=saved.id)
    except VaultError as exc:
        raise BadRequest(
            f"the saved card cannot be used: {exc}", code=100, **invoice_of(data)
        ) from exc
    if saved.key_id != rt.vault.key_id:  # sealed under an earlier card key: move it on
        try:
            with rt.db.write() as session:
                service.rewrap(session, rt.vault, saved)
        except SQLAlchemyError:  # the payment goes on; `tolem keys rewrap` catches up
            log.warning("saved card %s not re-wrapped under the current key", saved.id)
    order = body.order()
    ctx = payments.PaymentContext(token=token, ip=ip)
    # The card's terminal stands in for a cryptogram's.
    return payments.pay(rt, ctx, order, card, saved.terminal_id)


def _card_view(card: SavedCard, tx: Transaction | None) -> dict[str, Any]:
    return {
        "ID": card.id,
        "TransactionId": card.transaction_id,
        "MerchantID": card.merchant_id,
        "CardHash": card.card_fingerprint,
        "CardMask": card.card_mask,
        "PayerName": card.payer_name,
        "Reference": tx.reference if tx else "",
        "IntReference": tx.int_reference if tx else "",
        "Token": "",
        "Terminal": card.terminal_id,
        "CreatedDate": card.created_at,
        "PaymentAvailable": True,
        "AccountID": card.account_id,
    }


def _service_token(rt: Runtime, request: Request) -> AccessToken:
    """Card lists and deactivation need a service token: an invoice-bound one may sit in
    a customer's browser page."""
    token = oauth.bearer(rt.sealer, request.headers.get("authorization"))
    if not token.is_service:
        raise Unauthorized("saved cards need a service token (issued without invoiceID)")
    return token


@router.get("/cards/{account_id}", summary="A customer's saved cards")
async def list_cards(
    account_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    token = _service_token(rt, request)

    def read() -> list[dict[str, Any]]:
        if wire.text_problem(account_id) or len(account_id) > 100:
            return []
        with rt.db.read() as session:
            return [
                _card_view(card, session.get(Transaction, card.transaction_id))
                for card in service.cards_of(session, token.merchant_id, account_id)
            ]

    found = await run_in_threadpool(read)
    if not found:
        return wire.json_response(
            {"code": NO_CARDS, "message": "no saved cards for this account"}, status_code=400
        )
    return wire.json_response(found)


@router.post("/card/deactivate/{card_id}", summary="Deactivate a saved card")
async def deactivate(
    card_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    token = _service_token(rt, request)

    def write() -> bool:
        if wire.text_problem(card_id):
            return False
        with rt.db.write() as session:
            return service.deactivate(session, token.merchant_id, card_id)

    if not await run_in_threadpool(write):
        return wire.json_response({"code": NO_CARDS, "message": "card not found"}, status_code=400)
    return wire.json_response({"status": "card successfully deactivated"})
