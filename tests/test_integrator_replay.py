"""The call sequence real integrators use (issue 6, "Done when"), on both databases.

One service token (no invoice, the broad scope) is fetched once and reused for every
status, operation and card call; each order is paid with its own invoice-bound token:

pay two orders (cardSave, one customer) → check-status → charge part of the first with
a JSON amount → refund part of it with ``?amount=`` and ``externalID`` → check-status →
cancel the second → list the customer's cards (one: the same card saved twice) → pay a
third order with the saved card → deactivate it → the list answers 1373.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx

from tests.support import (
    TERMINAL,
    Gateway,
    cryptopay,
    new_invoice,
    payment_body,
    query,
    token,
)

ACCOUNT = "replay-user"
VISA = ("4405639704015096", "0125", "815")
MASK = "440563...5096"
BROAD_SCOPE = "webapi usermanagement email_send verification statement statistics payment"

PAYMENT_KEYS = {
    "id", "amount", "amountBonus", "currency", "invoiceID", "invoiceIdAlt", "accountID",
    "phone", "email", "description", "reference", "intReference", "secure3D", "cardID",
    "language", "fee", "code", "status", "approvalCode", "cardMask", "cardType", "issuer",
}  # fmt: skip
STATUS_KEYS = {
    "id", "createdDate", "invoiceID", "amount", "amountBonus", "payoutAmount", "orgAmount",
    "currency", "terminal", "terminalID", "approvalCode", "data", "accountID", "description",
    "language", "cardMask", "cardType", "issuer", "cardID", "reference", "reason",
    "reasonCode", "intReference", "secure", "secureDetails", "statusID", "statusName", "name",
    "email", "phone", "ip", "ipCountry", "ipCity", "ipRegion", "ipDistrict", "ipLatitude",
    "ipLongitude",
}  # fmt: skip
OPERATION_KEYS = {
    "code", "message", "id", "operationId", "status", "amount", "amountCharged",
    "amountRefunded", "reference",
}  # fmt: skip
CARD_KEYS = {
    "ID", "TransactionId", "MerchantID", "CardHash", "CardMask", "PayerName", "Reference",
    "IntReference", "Token", "Terminal", "CreatedDate", "PaymentAvailable", "AccountID",
}  # fmt: skip


def _json(response: httpx.Response) -> Any:
    """The answer's JSON with its numbers read exactly."""
    return json.loads(response.text, parse_float=Decimal)


def _pay_order(gw: Gateway, client: httpx.Client, amount: int) -> tuple[str, dict[str, Any]]:
    """An order paid with its own invoice-bound token, saving the card."""
    invoice = new_invoice()
    order_token = token(client, invoice=invoice, amount=amount)["access_token"]
    body = payment_body(gw, invoice, amount=amount, card=VISA, cardSave=True, accountId=ACCOUNT)
    answer = cryptopay(client, order_token, body)
    assert answer.status_code == 200, answer.text
    paid = _json(answer)
    assert set(paid) == PAYMENT_KEYS, answer.text
    assert (paid["code"], paid["status"], paid["secure3D"], paid["fee"]) == (0, "AUTH", None, 0)
    assert (paid["amount"], paid["currency"], paid["invoiceID"], paid["accountID"]) == (
        amount,
        "KZT",
        invoice,
        ACCOUNT,
    )
    assert paid["invoiceIdAlt"] == "8564546" and paid["cardMask"] == MASK
    assert len(paid["id"]) == 36 and len(paid["cardID"]) == 36
    assert len(paid["reference"]) == 12 and paid["reference"].isdigit()
    assert len(paid["approvalCode"]) == 6
    return invoice, paid


def _status(client: httpx.Client, headers: dict[str, str], invoice: str) -> dict[str, Any]:
    answer = client.get(f"/check-status/payment/transaction/{invoice}", headers=headers)
    assert answer.status_code == 200, answer.text
    body = _json(answer)
    assert set(body) == {"resultCode", "resultMessage", "transaction"}, answer.text
    assert (body["resultCode"], body["resultMessage"]) == ("100", "SUCCESS")
    tx: dict[str, Any] = body["transaction"]
    assert set(tx) == STATUS_KEYS, sorted(set(tx) ^ STATUS_KEYS)
    return tx


def _operation(
    answer: httpx.Response, tx_id: str, status: str, amount: int, charged: int, refunded: int
) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = _json(answer)
    assert set(body) == OPERATION_KEYS, answer.text
    assert (body["code"], body["message"], body["id"], body["status"]) == (
        0,
        "success",
        tx_id,
        status,
    )
    assert (body["amount"], body["amountCharged"], body["amountRefunded"]) == (
        amount,
        charged,
        refunded,
    ), answer.text
    assert len(body["operationId"]) == 36 and len(body["reference"]) == 12
    return body


def test_the_integrators_call_sequence(gateway: Gateway) -> None:
    with gateway.client() as client:
        # One service token, no invoice, the broad scope: reused for everything below.
        issued = token(client)
        assert set(issued) == {"access_token", "expires_in", "refresh_token", "scope", "token_type"}
        assert (issued["scope"], issued["token_type"]) == (BROAD_SCOPE, "Bearer")
        assert int(issued["expires_in"]) > 0
        service = {"Authorization": f"Bearer {issued['access_token']}"}

        # Two orders, each with its own token; the same card saved twice.
        first_invoice, first = _pay_order(gateway, client, 1500)
        second_invoice, second = _pay_order(gateway, client, 700)
        card_id = first["cardID"]
        assert second["cardID"] == card_id
        assert second["id"] != first["id"]

        # Status of the first order.
        tx = _status(client, service, first_invoice)
        assert (tx["id"], tx["invoiceID"], tx["statusName"], tx["statusID"]) == (
            first["id"],
            first_invoice,
            "AUTH",
            "AUTH",
        )
        assert (tx["amount"], tx["orgAmount"], tx["payoutAmount"], tx["currency"]) == (
            1500,
            1500,
            0,
            "KZT",
        )
        assert (tx["terminal"], tx["terminalID"], tx["accountID"], tx["cardID"]) == (
            TERMINAL,
            TERMINAL,
            ACCOUNT,
            card_id,
        )
        assert (tx["reference"], tx["approvalCode"], tx["cardMask"]) == (
            first["reference"],
            first["approvalCode"],
            MASK,
        )
        assert (tx["reasonCode"], tx["secure"], tx["name"], tx["email"]) == (
            0,
            False,
            "JON JONSON",
            "jj@example.com",
        )

        # Charge part of it, the amount in a JSON body.
        charged = client.post(
            f"/operation/{first['id']}/charge", headers=service, json={"amount": 1000}
        )
        _operation(charged, first["id"], "CHARGE", 1000, 1000, 0)

        # Refund part of the charge: ?amount= and externalID.
        refunded = client.post(
            f"/operation/{first['id']}/refund",
            headers=service,
            params={"amount": "250.50", "externalID": "replay-refund-1"},
        )
        _operation(refunded, first["id"], "CHARGE", Decimal("250.5"), 1000, Decimal("250.5"))

        # Status again: charged, partly refunded.
        tx = _status(client, service, first_invoice)
        assert (tx["id"], tx["statusName"], tx["statusID"]) == (first["id"], "CHARGE", "CHARGE")
        assert (tx["amount"], tx["orgAmount"], tx["payoutAmount"]) == (
            1500,
            1500,
            Decimal("749.5"),
        )

        # Cancel the second order.
        cancelled = client.post(f"/operation/{second['id']}/cancel", headers=service)
        _operation(cancelled, second["id"], "CANCEL", 700, 0, 0)
        assert _status(client, service, second_invoice)["statusName"] == "CANCEL"

        # The customer's cards: one.
        listed = client.get(f"/cards/{ACCOUNT}", headers=service)
        assert listed.status_code == 200, listed.text
        cards = _json(listed)
        assert isinstance(cards, list) and len(cards) == 1, listed.text
        [card] = cards
        assert set(card) == CARD_KEYS, listed.text
        assert (card["ID"], card["TransactionId"], card["CardMask"], card["AccountID"]) == (
            card_id,
            first["id"],
            MASK,
            ACCOUNT,
        )
        assert (card["Terminal"], card["PayerName"], card["Token"], card["PaymentAvailable"]) == (
            TERMINAL,
            "JON JONSON",
            "",
            True,
        )
        assert (card["Reference"], card["IntReference"]) == (
            first["reference"],
            first["intReference"],
        )
        assert card["CardHash"] and card["MerchantID"] and card["CreatedDate"]

        # A third order, paid with the saved card (its own invoice-bound token, no CVC).
        third_invoice = new_invoice()
        order_token = token(client, invoice=third_invoice, amount=320)["access_token"]
        by_card = client.post(
            "/payments/cards/auth",
            headers={"Authorization": f"Bearer {order_token}"},
            json={
                "amount": 320,
                "currency": "KZT",
                "name": "JON JONSON",
                "terminalId": TERMINAL,
                "invoiceId": third_invoice,
                "invoiceIdAlt": "8564547",
                "description": "repeat order",
                "accountId": ACCOUNT,
                "email": "jj@example.com",
                "phone": "77777777777",
                "backLink": "https://testmerchant/order/3/ok",
                "failureBackLink": "https://testmerchant/order/3/fail",
                "postLink": "https://testmerchant/order/3",
                "failurePostLink": "https://testmerchant/order/3/fail",
                "language": "rus",
                "paymentType": "cardId",
                "cardId": {"id": card_id},
            },
        )
        assert by_card.status_code == 200, by_card.text
        third = _json(by_card)
        assert set(third) == PAYMENT_KEYS, by_card.text
        assert (third["code"], third["status"], third["secure3D"], third["cardID"]) == (
            0,
            "AUTH",
            None,
            card_id,
        )
        assert (third["amount"], third["invoiceID"], third["accountID"], third["cardMask"]) == (
            320,
            third_invoice,
            ACCOUNT,
            MASK,
        )
        assert len(third["reference"]) == 12 and third["id"] not in (first["id"], second["id"])
        tx = _status(client, service, third_invoice)
        assert (tx["id"], tx["statusName"], tx["amount"], tx["cardID"]) == (
            third["id"],
            "AUTH",
            320,
            card_id,
        )

        # Deactivate the card: the list is empty (1373).
        done = client.post(f"/card/deactivate/{card_id}", headers=service)
        assert done.status_code == 200, done.text
        assert _json(done) == {"status": "card successfully deactivated"}
        empty = client.get(f"/cards/{ACCOUNT}", headers=service)
        assert empty.status_code == 400, empty.text
        body = _json(empty)
        assert set(body) == {"code", "message"} and body["code"] == 1373, empty.text
        assert body["message"]

    # What the gateway recorded.
    operations = query(
        gateway.database_url,
        "SELECT transaction_id, kind, amount, external_id, state FROM operations"
        " WHERE transaction_id IN (:a, :b, :c) ORDER BY created_at",
        a=first["id"],
        b=second["id"],
        c=third["id"],
    )
    assert [
        (o.transaction_id, o.kind, int(o.amount), o.external_id, o.state) for o in operations
    ] == [
        (first["id"], "charge", 100_000, "", "done"),
        (first["id"], "refund", 25_050, "replay-refund-1", "done"),
        (second["id"], "cancel", 70_000, "", "done"),
    ]
    rows = query(
        gateway.database_url,
        "SELECT id, status, amount_charged, amount_refunded, amount_refund_pending,"
        " operation_lock FROM transactions WHERE id IN (:a, :b, :c)",
        a=first["id"],
        b=second["id"],
        c=third["id"],
    )
    assert {
        r.id: (
            r.status,
            int(r.amount_charged),
            int(r.amount_refunded),
            int(r.amount_refund_pending),
        )
        for r in rows
    } == {
        first["id"]: ("CHARGE", 100_000, 25_050, 0),
        second["id"]: ("CANCEL", 0, 0, 0),
        third["id"]: ("AUTH", 0, 0, 0),
    }
    assert all(r.operation_lock is None for r in rows)
    saved = query(
        gateway.database_url,
        "SELECT state, sealed FROM saved_cards WHERE account_id = :a",
        a=ACCOUNT,
    )
    assert [(s.state, s.sealed) for s in saved] == [("deactivated", "")]
