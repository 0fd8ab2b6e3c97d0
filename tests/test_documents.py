"""Replay the two original ePay documents against a real ``tolem serve`` over HTTP."""

from __future__ import annotations

import re

import pytest

from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    TERMINAL,
    Gateway,
    cryptopay,
    new_invoice,
    payment_body,
)
from tests.support import token as support_token

pytestmark = pytest.mark.usefixtures("gateway")


def test_payment_page_document_token_request_as_form_data(gateway: Gateway) -> None:
    """seed-payment-page.en.txt: the token request, sent as form-data, field for field."""
    invoice = new_invoice(9)
    form = {
        "grant_type": "client_credentials",
        "scope": "payment",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "invoiceID": invoice,
        "secret_hash": "JDKCNDDGGDTPSKJD",
        "amount": "100",
        "currency": "KZT",
        "terminal": TERMINAL,
        "postLink": "",
        "failurePostLink": "",
    }
    with gateway.client() as client:
        response = client.post("/oauth2/token", files={k: (None, v) for k, v in form.items()})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"access_token", "expires_in", "refresh_token", "scope", "token_type"}
        assert body["expires_in"] == "7200"
        assert body["refresh_token"] == ""
        assert body["scope"] == "payment"
        assert body["token_type"] == "Bearer"
        assert len(body["access_token"]) > 20

        # The test host's path spelling gives the same answer.
        again = client.post("/epay2/oauth2/token", data=form)
        assert again.status_code == 200, again.text
        assert again.json()["expires_in"] == "7200"


def test_api_payment_document_success(gateway: Gateway) -> None:
    """seed-api-payment.kk.txt: token, public key, cryptogram, cryptopay -> AUTH."""
    invoice = new_invoice()
    with gateway.client() as client:
        token = client.post(
            "/epay2/oauth2/token",
            files={
                k: (None, v)
                for k, v in {
                    "grant_type": "client_credentials",
                    "scope": "webapi usermanagement email_send verification statement "
                    "statistics payment",
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "invoiceID": invoice,
                    "amount": "100",
                    "currency": "KZT",
                    "terminal": TERMINAL,
                }.items()
            },
        ).json()
        assert client.get("/api/public.rsa").text.startswith("-----BEGIN PUBLIC KEY-----")

        response = cryptopay(
            client,
            token["access_token"],
            payment_body(gateway, invoice),
            path="/api/payment/cryptopay",
        )
        assert response.status_code == 200, response.text
        body = response.json()
        for name in (
            "id amount amountBonus currency invoiceID invoiceIdAlt accountID phone email "
            "description reference intReference secure3D cardID language fee code status"
        ).split():
            assert name in body, name
        assert re.fullmatch(r"[0-9a-f-]{36}", body["id"])
        assert body["amount"] == 100 and isinstance(body["amount"], int)
        assert body["amountBonus"] == 0
        assert body["currency"] == "KZT"
        assert body["invoiceID"] == invoice
        assert body["invoiceIdAlt"] == "8564546"
        assert body["accountID"] == "uuid000001"
        assert body["phone"] == "77777777777"
        assert body["email"] == "jj@example.com"
        assert body["description"] == "test payment"
        assert re.fullmatch(r"\d{12}", body["reference"])
        assert body["intReference"]
        assert body["secure3D"] is None
        assert body["language"] == "rus"
        assert body["fee"] == 0
        assert body["code"] == 0
        assert body["status"] == "AUTH"  # terminals are two-step by default
        assert re.fullmatch(r"\d{6}", body["approvalCode"])
        assert body["cardMask"] == "440563...5096"
        assert body["cardType"] == "VISA"


def test_api_payment_document_failure_shape(gateway: Gateway) -> None:
    """The document's failure: HTTP 400 with code, message and the invoice fields."""
    invoice = new_invoice(13)
    with gateway.client() as client:
        token = support_token(client, invoice=invoice, multipart=False)
        # The published Amex 'lock' card declines with 487, the document's example code.
        body = payment_body(gateway, invoice, card=("377514500004820", "0125", "4169"))
        response = cryptopay(client, token["access_token"], body)
        assert response.status_code == 400
        failure = response.json()
        assert set(failure) == {"code", "message", "invoiceId", "id", "reference", "accountId"}
        assert failure["code"] == 487
        assert failure["message"].strip() == "Not permitted to merchant"
        assert failure["invoiceId"] == invoice
        assert failure["reference"] == ""
        assert failure["accountId"] == "uuid000001"
