"""check-status: what a shop sees of a payment, including one waiting for 3-D Secure."""

from __future__ import annotations

import uuid

import httpx
import sqlalchemy as sa

from tests.secure3d_support import confirm, pass_acs, start
from tests.support import (
    TERMINAL,
    Gateway,
    cryptogram,
    cryptopay,
    new_invoice,
    pay,
    payment_body,
    token,
)


def _status(client: httpx.Client, tok: str, invoice: str) -> httpx.Response:
    return client.get(
        f"/check-status/payment/transaction/{invoice}",
        headers={"Authorization": f"Bearer {tok}"},
    )


def test_status_shows_a_payment_waiting_for_3ds_then_authorized(gateway: Gateway) -> None:
    with gateway.client() as client:
        service_token = token(client)["access_token"]  # no invoice: reused for every lookup
        pending = start(gateway, client)
        waiting = _status(client, service_token, pending.invoice)
        assert waiting.status_code == 200, waiting.text
        body = waiting.json()
        assert (body["resultCode"], body["resultMessage"]) == ("100", "SUCCESS")
        tx = body["transaction"]
        assert (tx["id"], tx["statusName"], tx["secure"]) == (pending.id, "NEW", False)
        assert tx["terminalID"] == TERMINAL and tx["amount"] == 100
        assert tx["cardMask"].startswith("400000...") and tx["reasonCode"] == 0

        pa_res, md = pass_acs(client, pending)
        confirm(client, pending.token, pending.id, pa_res, md)
        tx = _status(client, service_token, pending.invoice).json()["transaction"]
        assert (tx["statusName"], tx["secure"]) == ("AUTH", True)
        assert len(tx["reference"]) == 12 and len(tx["approvalCode"]) == 6

        declined = pay(gateway, client, card=("4003032704547597", "0920", "170")).json()
        tx = _status(client, service_token, declined["invoiceId"]).json()["transaction"]
        assert (tx["statusName"], tx["reasonCode"]) == ("FAILED", 465)


def test_status_not_found_and_no_terminal(gateway: Gateway) -> None:
    with gateway.client() as client:
        tok = token(client)["access_token"]
        missing = _status(client, tok, new_invoice())
        assert missing.status_code == 400
        assert missing.json() == {"resultCode": "102", "resultMessage": "Invoice not found"}
        no_terminal = token(client, terminal="")["access_token"]
        answer = _status(client, no_terminal, new_invoice())
        assert (answer.status_code, answer.json()["resultCode"]) == (400, "104")
        assert _status(client, "garbage", new_invoice()).status_code == 401
        # Found under the /api prefix too.
        paid = pay(gateway, client).json()
        api = client.get(
            f"/api/check-status/payment/transaction/{paid['invoiceID']}",
            headers={"Authorization": f"Bearer {tok}"},
        )
        assert api.json()["transaction"]["statusName"] == "AUTH"


def test_another_merchant_never_sees_the_payment(gateway: Gateway) -> None:
    from tests.test_secure3d import _merchant, _token

    with gateway.client() as client:
        paid = pay(gateway, client).json()
        stranger = _token(client, _merchant(gateway), new_invoice())
        answer = _status(client, stranger, paid["invoiceID"])
        assert (answer.status_code, answer.json()["resultCode"]) == (400, "102")
        assert "transaction" not in answer.json()


def test_an_invoice_on_another_terminal_of_the_merchant_is_109(gateway: Gateway) -> None:
    second = str(uuid.uuid4())
    engine = sa.create_engine(gateway.database_url)
    try:  # a second terminal of the test merchant (the CLI makes one per merchant)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO terminals (id, merchant_id, name, two_step, currencies,"
                    " secure3d, is_test, created_at) SELECT :id, merchant_id, 'second',"
                    " two_step, currencies, secure3d, is_test, created_at FROM terminals"
                    " WHERE id = :t"
                ),
                {"id": second, "t": TERMINAL},
            )
    finally:
        engine.dispose()
    with gateway.client() as client:
        invoice = new_invoice()
        tok = token(client, invoice=invoice, terminal=second)["access_token"]
        body = payment_body(gateway, invoice)
        body["cryptogram"] = cryptogram(gateway, "4405639704015096", "0125", "815", terminal=second)
        paid = cryptopay(client, tok, body)
        assert paid.status_code == 200, paid.text
        first_terminal = token(client)["access_token"]
        answer = _status(client, first_terminal, invoice)
        assert answer.status_code == 400
        assert answer.json() == {
            "resultCode": "109",
            "resultMessage": "Terminal does not belong to the client",
        }
        # Operations with a token of the first terminal do not find it either.
        charge = client.post(
            f"/operation/{paid.json()['id']}/charge",
            headers={"Authorization": f"Bearer {first_terminal}"},
        )
        assert (charge.status_code, charge.json()["message"]) == (400, "transaction not found")
        own = _status(client, token(client, terminal=second)["access_token"], invoice)
        assert own.json()["transaction"]["terminalID"] == second


def test_status_shows_the_newest_payment_of_an_invoice_paid_again(gateway: Gateway) -> None:
    """A declined invoice may be paid again: check-status shows the newest attempt, and
    finds it by the invoice however many other payments the merchant has."""
    with gateway.client() as client:
        service_token = token(client)["access_token"]
        invoice = new_invoice()
        attempts = []
        for card in (
            ("5578342710750560", "0920", "254"),  # declined, 484: the invoice is free again
            ("4405639704015096", "0125", "815"),
        ):
            tok = token(client, invoice=invoice)["access_token"]
            attempts.append(cryptopay(client, tok, payment_body(gateway, invoice, card=card)))
        assert [a.status_code for a in attempts] == [400, 200], attempts[-1].text
        tx = _status(client, service_token, invoice).json()["transaction"]
        assert (tx["id"], tx["statusName"]) == (attempts[1].json()["id"], "AUTH")
