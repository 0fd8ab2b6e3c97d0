"""A card number a shop writes in a free-text field is refused, on every way in.

The rule (tolem.carddata.card_number_in) is narrow: 13 to 19 digits, plain or in groups
joined by single spaces or dashes, Luhn-valid, with a card brand's prefix. Such text is
refused with a 400 that names the field and shows only the mask, so nothing of it is
stored, logged or answered. Order numbers that are not card numbers pass untouched.
The proof is the suite's proof for card data (tests/test_card_data.py): after real
requests to a real gateway, the raw database (the SQLite files, or a pg_dump) and the
gateway's log hold no trace of the card number.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.payform_support import VISA, order, submit
from tests.support import TERMINAL, Gateway, cryptopay, new_invoice, payment_body, query, token
from tests.test_card_data import _dump
from tolem import carddata

_SEPARATORS = re.compile(r"[ \-]")


def fresh_pan(prefix: str = "4", length: int = 16) -> str:
    """A card number no other test uses: any hit in the database or the log is ours."""
    body = prefix + "".join(secrets.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return carddata.luhn_complete(body)


def spaced(pan: str, sep: str = " ") -> str:
    return sep.join(pan[i : i + 4] for i in range(0, len(pan), 4))


def not_a_card(prefix: str, length: int = 16) -> str:
    """Digits that are not a card number: Luhn-valid without a brand's prefix, or with
    one but failing Luhn."""
    if carddata.has_card_prefix(prefix):
        pan = fresh_pan(prefix, length)
        return pan[:-1] + str((int(pan[-1]) + 1) % 10)
    return fresh_pan(prefix, length)


def assert_nowhere(gateway: Gateway, tmp_path: Path, *texts: str) -> None:
    """No card number in ``texts`` (answers) nor, written any way, in the raw database
    or the gateway's log."""
    raw = _SEPARATORS.sub("", _dump(gateway, tmp_path).decode("latin-1"))
    log = _SEPARATORS.sub("", gateway.log_text())
    answers = _SEPARATORS.sub("", " ".join(texts))
    for pan in PANS:
        assert pan not in raw, f"{pan[:6]}… stored"
        assert pan not in log, f"{pan[:6]}… logged"
        assert pan not in answers, f"{pan[:6]}… answered"


# One fresh card number for each field, each written another way.
PANS = [fresh_pan("4"), fresh_pan("52"), fresh_pan("2202"), fresh_pan("37", 15)]
PANS += [fresh_pan("62", 19), fresh_pan("3530"), fresh_pan("4", 13), fresh_pan("6011")]
WRITTEN = {
    "description": f"order for card {spaced(PANS[0])}",
    "name": spaced(PANS[1], "-"),
    "accountId": PANS[2],
    "email": f"{PANS[3]}@example.com",
    "phone": f"+{PANS[4]}",
    "data": json.dumps({"card": int(PANS[5])}),  # a JSON number, not a string
}


def _refused(answer: httpx.Response, field: str, pan: str) -> None:
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    assert message.startswith(f"{field}: holds a card number ({carddata.mask(pan)})"), message
    assert answer.json()["code"] == 477


def _pan_in(field: str) -> str:
    return next(pan for pan in PANS if pan in _SEPARATORS.sub("", WRITTEN[field]))


# --- The rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("card 4405639704015096", "4405639704015096"),
        ("4405 6397 0401 5096", "4405639704015096"),
        ("4405-6397-0401-5096", "4405639704015096"),
        ("4405 6397 0401 5096 12 27", "4405639704015096"),  # followed by its expiry
        ("x4405639704015096@example.com", "4405639704015096"),
        ('{"card":4405639704015096}', "4405639704015096"),
        ("377514500004820", "377514500004820"),  # 15-digit AMEX
        ("3530111333300000", "3530111333300000"),  # JCB, a brand tolem does not name
        ("6011000990139424", "6011000990139424"),  # Discover
        ("4405639704015097", None),  # fails Luhn
        ("9405639704015094", None),  # Luhn-valid, no brand's prefix
        ("1541815603606036480", None),  # a 19-digit snowflake id
        ("1764489600000", None),  # a timestamp in milliseconds
        ("870412300415", None),  # a 12-digit IIN
        ("+7 701 234 5678", None),  # a phone number
        ("44056397040150961", None),  # part of a longer run
        ("144056397040150961", None),
        ("4405  6397 0401 5096", None),  # two spaces: not one written number
        ("4405.6397.0401.5096", None),
        ("123e4567-e89b-12d3-4405-639704015096", None),  # a UUID's digits
        ("", None),
    ],
)
def test_the_rule(text: str, found: str | None) -> None:
    assert carddata.card_number_in(text) == found


def test_the_rule_is_fast_on_long_digit_soup() -> None:
    soup = " ".join("7" for _ in range(2000))  # 2,000 one-digit groups
    assert carddata.card_number_in(soup) is None
    assert carddata.card_number_in(soup + " " + spaced("4405639704015096")) is not None


def test_the_negative_examples_are_what_they_say() -> None:
    for prefix in ("4", "52", "9", "1", "80"):
        digits = not_a_card(prefix)
        assert len(digits) == 16 and carddata.card_number_in(digits) is None, digits


# --- Every way in --------------------------------------------------------------------


def test_a_card_number_in_the_shops_free_text_is_not_stored(
    gateway: Gateway, tmp_path: Path
) -> None:
    answers: list[str] = []
    with gateway.client() as client:
        # cryptopay: every free-text field, each alone, one with an Idempotency-Key (its
        # answer is kept for replays: it must be clean too).
        for field, value in WRITTEN.items():
            invoice = new_invoice()
            tok = token(client, invoice=invoice)["access_token"]
            answer = client.post(
                "/payment/cryptopay",
                json=payment_body(gateway, invoice) | {field: value},
                headers={"Authorization": f"Bearer {tok}", "Idempotency-Key": f"ft-{invoice}"},
            )
            _refused(answer, field, _pan_in(field))
            assert answer.json()["invoiceId"] == invoice
            assert answer.json()["accountId"] in ("", "uuid000001")
            answers.append(answer.text)
            stored = query(
                gateway.database_url,
                "SELECT id FROM transactions WHERE invoice_id = :invoice",
                invoice=invoice,
            )
            assert stored == []
        # data as a JSON object, its card number in a string this time.
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        body = payment_body(gateway, invoice) | {"data": {"pan": spaced(PANS[6])}}
        answer = cryptopay(client, tok, body)
        _refused(answer, "data", PANS[6])
        answers.append(answer.text)
        # The same order without the card number goes through.
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        assert cryptopay(client, tok, payment_body(gateway, invoice)).status_code == 200
    assert_nowhere(gateway, tmp_path, *answers)


def test_a_saved_card_payment_refuses_a_card_number_in_free_text(
    gateway: Gateway, tmp_path: Path
) -> None:
    answers: list[str] = []
    with gateway.client() as client:
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        saved = cryptopay(client, tok, payment_body(gateway, invoice, accountId="ft-saved"))
        card_id = saved.json()["cardID"]

        def with_card(**fields: Any) -> httpx.Response:
            invoice = new_invoice()
            tok = token(client, invoice=invoice)["access_token"]
            body = {
                "amount": 100,
                "currency": "KZT",
                "name": "JON JONSON",
                "terminalId": TERMINAL,
                "invoiceId": invoice,
                "description": "repeat order",
                "accountId": "ft-saved",
                "paymentType": "cardId",
                "cardId": {"id": card_id},
            }
            return client.post(
                "/payments/cards/auth",
                json=body | fields,
                headers={"Authorization": f"Bearer {tok}"},
            )

        for field, value in WRITTEN.items():
            answer = with_card(**{field: value})
            _refused(answer, field, _pan_in(field))
            answers.append(answer.text)
        again = with_card(description="repeat order 2")
        assert again.status_code == 200 and again.json()["status"] == "AUTH", again.text
    assert_nowhere(gateway, tmp_path, *answers)


def test_the_hosted_page_refuses_a_card_number_in_the_shops_params(
    gateway: Gateway, tmp_path: Path
) -> None:
    answers: list[str] = []
    with gateway.client() as client:
        for field, value in WRITTEN.items():
            page = order(gateway, client, **{field: value})
            shown = client.get(page.link)
            assert shown.status_code == 400, (field, shown.text[:500])
            assert carddata.mask(_pan_in(field)) in shown.text, field
            paid = submit(client, page.params, VISA)
            assert paid.status_code != 303, field
            answers += [shown.text, paid.text]
            stored = query(
                gateway.database_url,
                "SELECT id FROM transactions WHERE invoice_id = :invoice",
                invoice=page.invoice,
            )
            assert stored == []
        fine = order(gateway, client, description="Заказ 4405639704015097")
        assert client.get(fine.link).status_code == 200
        assert submit(client, fine.params, VISA).status_code == 303
    assert_nowhere(gateway, tmp_path, *answers)


def test_a_token_request_refuses_a_card_number_in_scope_or_secret_hash(
    gateway: Gateway, tmp_path: Path
) -> None:
    answers: list[str] = []
    with gateway.client() as client:
        for field, pan in (("scope", PANS[7]), ("secret_hash", PANS[0])):
            form = {
                "grant_type": "client_credentials",
                "client_id": "test",
                "client_secret": "yF587AV9Ms94qN2QShFzVR3vFnWkhjbAK3sG",
                "terminal": TERMINAL,
                "invoiceID": new_invoice(),
                "amount": "100",
                "currency": "KZT",
                field: f"payment {spaced(pan)}",
            }
            answer = client.post("/oauth2/token", data=form)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"] == "invalid_request"
            described = answer.json()["error_description"]
            assert described.startswith(f"{field}: holds a card number ({carddata.mask(pan)})")
            answers.append(answer.text)
    assert_nowhere(gateway, tmp_path, *answers)


def test_a_refund_refuses_a_card_number_in_its_external_id(
    gateway: Gateway, tmp_path: Path
) -> None:
    with gateway.client() as client:
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        tx = cryptopay(client, tok, payment_body(gateway, invoice)).json()["id"]
        service = {"Authorization": f"Bearer {token(client)['access_token']}"}
        refused = client.post(
            f"/operation/{tx}/cancel", headers=service, params={"externalID": PANS[1]}
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["message"].startswith("externalID: holds a card number")
        done = client.post(
            f"/operation/{tx}/cancel", headers=service, params={"externalID": not_a_card("4")}
        )
        assert done.status_code == 200, done.text
    assert_nowhere(gateway, tmp_path, refused.text)


# --- What is not a card number stays as sent ------------------------------------------


def test_long_order_numbers_that_are_not_card_numbers_are_stored_as_sent(
    gateway: Gateway,
) -> None:
    failing_luhn, no_brand = not_a_card("4"), not_a_card("9")
    sent = {
        "description": f"order {spaced(failing_luhn)} and {no_brand}",
        "name": "JON 1541815603606036480",
        "accountId": no_brand,
        "email": f"{failing_luhn}@example.com",
        "phone": "+7 701 234 5678",
        "data": json.dumps({"ref": int(failing_luhn), "iin": "870412300415"}),
    }
    # invoiceId and invoiceIdAlt are order numbers: one that is a card number's shape
    # (15 digits, Luhn-valid, a brand's prefix) is not looked at.
    invoice = fresh_pan("4", 15)
    assert carddata.card_number_in(invoice) == invoice
    with gateway.client() as client:
        tok = token(client, invoice=invoice)["access_token"]
        body = payment_body(gateway, invoice, invoiceIdAlt=invoice) | sent
        answer = cryptopay(client, tok, body)
        assert answer.status_code == 200, answer.text
        page = order(gateway, client, **sent)
        assert client.get(page.link).status_code == 200
        assert submit(client, page.params, VISA).status_code == 303
    for stored_invoice in (invoice, page.invoice):
        [row] = query(
            gateway.database_url,
            "SELECT description, account_id, data FROM transactions WHERE invoice_id = :invoice",
            invoice=stored_invoice,
        )
        assert (row.description, row.account_id, row.data) == (
            sent["description"],
            sent["accountId"],
            sent["data"],
        )
    # The payer's own name, email and phone replace the shop's on the hosted page.
    [row] = query(
        gateway.database_url,
        "SELECT payer_name, email, phone, invoice_id_alt FROM transactions WHERE invoice_id = :i",
        i=invoice,
    )
    assert (row.payer_name, row.email, row.phone, row.invoice_id_alt) == (
        sent["name"],
        sent["email"],
        sent["phone"],
        invoice,
    )
