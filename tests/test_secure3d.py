"""3-D Secure by plain HTTP: cryptopay -> ACS -> TermUrl -> /payment/confirm, and attacks."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.secure3d_support import (
    MASTERCARD_3DS,
    TERM_URL,
    VISA_3DS,
    VISA_3DS_THEN_484,
    acs_page,
    answer,
    confirm,
    hidden,
    otp,
    pass_acs,
    start,
)
from tests.support import (
    Gateway,
    cryptopay,
    new_invoice,
    pay,
    payment_body,
    query,
    start_gateway,
    token,
)


def status(gw: Gateway, tx_id: str) -> tuple[str, int, bool]:
    [row] = query(
        gw.database_url,
        "SELECT status, reason_code, secure FROM transactions WHERE id = :i",
        i=tx_id,
    )
    return str(row[0]), int(row[1]), bool(row[2])


def test_visa_and_mastercard_pass_3ds_and_are_authorized(gateway: Gateway) -> None:
    with gateway.client() as client:
        for card in (VISA_3DS, MASTERCARD_3DS):
            pending = start(gateway, client, card=card)
            s3d = pending.secure3d
            assert "status" not in pending.body and pending.body["reference"] == ""
            assert s3d["paReq"].startswith("eJ") and s3d["action"].endswith("/acs/pa")
            assert pending.body["invoiceID"] == pending.invoice
            assert status(gateway, pending.id) == ("NEW", 0, False)

            pa_res, md = pass_acs(client, pending)
            assert md == s3d["md"] and pa_res.startswith("eJ")
            done = confirm(client, pending.token, pending.id, pa_res, md)
            assert done.status_code == 200, done.text
            result = done.json()
            assert (result["code"], result["status"], result["secure"]) == (0, "AUTH", True)
            url = urlsplit(result["redirectUrl"])
            assert url.path == "/payform/success.html"
            query = parse_qs(url.query)
            assert query["invoiceID"] == [pending.invoice] and query["amount"] == ["100"]
            assert query["reference"] == [result["reference"]] and len(result["reference"]) == 12
            assert set(query) >= {"currency", "accountID", "description", "language"}
            assert status(gateway, pending.id) == ("AUTH", 0, True)
            landing = client.get(result["redirectUrl"])
            assert landing.status_code == 200 and result["reference"] in landing.text


def test_acs_page_shows_merchant_amount_and_masked_card_in_the_payments_language(
    gateway: Gateway,
) -> None:
    with gateway.client() as client:
        for language, word in (("rus", "Подтверждение"), ("KZ", "Төлемді"), ("eng", "Confirm")):
            page = acs_page(client, start(gateway, client, language=language))
            assert word in page
            assert "ePay test merchant" in page
            assert "100.00 KZT" in page.replace("\u00a0", " ")
            assert "...".join([VISA_3DS[0][:6], VISA_3DS[0][-4:]]) in page
            assert VISA_3DS[0] not in page


def test_three_wrong_codes_fail_with_499_and_land_on_the_error_page(gateway: Gateway) -> None:
    with gateway.client() as client:
        pending = start(gateway, client, language="eng")
        right = otp(acs_page(client, pending))
        wrong = f"{(int(right[0]) + 1) % 10}{right[1:]}"
        for left in (2, 1):
            retry = answer(client, pending, wrong)
            assert f'id="error" role="alert">Wrong code. Attempts left: {left}<' in retry.text
        final = answer(client, pending, wrong)
        assert f'action="{TERM_URL}"' in final.text
        pa_res, md = hidden(final.text, "PaRes"), hidden(final.text, "MD")
        # The right code is too late now: the ACS has settled on a failure.
        late = answer(client, pending, right)
        assert hidden(late.text, "PaRes") != "" and 'id="error"' not in late.text
        result = confirm(client, pending.token, pending.id, pa_res, md).json()
        assert (result["code"], result["status"]) == (499, "3D")
        query = parse_qs(urlsplit(result["redirectUrl"]).query)
        assert query["code"] == ["499"] and query["invoiceID"] == [pending.invoice]
        assert status(gateway, pending.id) == ("3D", 499, False)


def test_fail_button_gives_473_and_frees_the_invoice(gateway: Gateway) -> None:
    with gateway.client() as client:
        pending = start(gateway, client)
        posted = answer(client, pending, None)
        result = confirm(
            client,
            pending.token,
            pending.id,
            hidden(posted.text, "PaRes"),
            hidden(posted.text, "MD"),
        ).json()
        assert (result["code"], result["status"]) == (473, "3D")
        again = cryptopay(client, pending.token, payment_body(gateway, pending.invoice))
        assert again.status_code == 200, again.text  # the shop may retry the order


def test_authenticated_but_declined_by_the_issuer(gateway: Gateway) -> None:
    with gateway.client() as client:
        pending = start(gateway, client, card=VISA_3DS_THEN_484)
        pa_res, md = pass_acs(client, pending)
        result = confirm(client, pending.token, pending.id, pa_res, md).json()
        assert (result["code"], result["status"]) == (484, "FAILED")


def test_confirm_answers_a_browser_with_a_redirect_page(gateway: Gateway) -> None:
    with gateway.client() as client:
        pending = start(gateway, client)
        pa_res, md = pass_acs(client, pending)
        page = confirm(client, pending.token, pending.id, pa_res, md, Accept="text/html")
        assert page.status_code == 200 and "/payform/success.html?" in page.text


def test_field_names_are_read_in_any_case(gateway: Gateway) -> None:
    with gateway.client() as client:
        pending = start(gateway, client)
        pa_res, md = pass_acs(client, pending)
        done = client.post(
            "/api/payment/confirm",
            json={"id": pending.id, "paRes": pa_res, "md": md},
            headers={"Authorization": f"Bearer {pending.token}"},
        )
        assert done.json()["status"] == "AUTH", done.text


def test_gateway_hosted_term_url_completes_and_redirects_with_reference(gateway: Gateway) -> None:
    with gateway.client() as client:
        pending = start(gateway, client)
        term_url = f"{gateway.base_url}/payments/cards/confirmPayment?Access={pending.token}"
        page = acs_page(client, pending, term_url)
        posted = answer(client, pending, otp(page), term_url)
        assert hidden(posted.text, "MD") == pending.secure3d["md"]
        final = client.post(
            term_url, data={"PaRes": hidden(posted.text, "PaRes"), "MD": hidden(posted.text, "MD")}
        )
        assert final.status_code == 303
        assert parse_qs(urlsplit(final.headers["location"]).query)["reference"][0].isdigit()
        assert status(gateway, pending.id)[0] == "AUTH"

        failing = start(gateway, client)
        term_url = f"{gateway.base_url}/payments/cards/confirmPayment?Access={failing.token}"
        posted = answer(client, failing, None, term_url)
        final = client.post(
            term_url, data={"PaRes": hidden(posted.text, "PaRes"), "MD": hidden(posted.text, "MD")}
        )
        assert parse_qs(urlsplit(final.headers["location"]).query)["errorCode"] == ["473"]


def test_terminal_policy_always_and_never(gateway: Gateway) -> None:
    with gateway.client() as client:
        for policy, card, challenged in (
            ("always", ("4405639704015096", "0125", "815"), True),
            ("never", VISA_3DS, False),
        ):
            creds = _merchant(gateway, "--secure3d", policy)
            invoice = new_invoice()
            tok = _token(client, creds, invoice)
            body = payment_body(gateway, invoice) | {
                "cryptogram": _cryptogram(gateway, card, creds["terminalId"])
            }
            result = cryptopay(client, tok, body).json()
            assert ("secure3D" in result and result["secure3D"] is not None) is challenged
        # The document's test cards stay frictionless on the default policy.
        assert pay(gateway, client).json()["secure3D"] is None


# --- attacks: each is refused with a reason code and changes nothing -----------------


def _assert_refused(response: httpx.Response, code: int) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == code and body["message"], body


def test_attacks_are_refused_and_change_nothing(gateway: Gateway) -> None:
    with gateway.client() as client:
        victim, other = start(gateway, client), start(gateway, client)
        pa_res, md = pass_acs(client, victim)
        other_pa_res, other_md = pass_acs(client, other)

        raw = bytearray(base64.b64decode(pa_res))
        raw[-1] ^= 1
        forged = base64.b64encode(bytes(raw)).decode()
        _assert_refused(confirm(client, victim.token, victim.id, forged, md), 473)
        _assert_refused(confirm(client, victim.token, victim.id, "not base64!", md), 473)
        # The PaRes of another transaction, with this one's MD.
        _assert_refused(confirm(client, victim.token, victim.id, other_pa_res, md), 473)
        # Swapped MD.
        _assert_refused(confirm(client, victim.token, victim.id, pa_res, other_md), 473)
        # Another merchant's token: the transaction does not exist for it.
        stranger = _token(client, _merchant(gateway), new_invoice())
        _assert_refused(confirm(client, stranger, victim.id, pa_res, md), 522)
        # The same merchant's token for another order.
        _assert_refused(confirm(client, other.token, victim.id, pa_res, md), 522)
        # A PaReq is not a PaRes, though both are sealed by the gateway.
        _assert_refused(confirm(client, victim.token, victim.id, victim.secure3d["paReq"], md), 473)
        assert status(gateway, victim.id) == ("NEW", 0, False)

        # The genuine answer still works, once: a replay is refused.
        assert confirm(client, victim.token, victim.id, pa_res, md).json()["status"] == "AUTH"
        _assert_refused(confirm(client, victim.token, victim.id, pa_res, md), 469)
        assert status(gateway, victim.id) == ("AUTH", 0, True)

        # Confirm on a transaction that never needed 3-D Secure.
        plain = pay(gateway, client).json()
        service_token = token(client)["access_token"]  # no invoice: any of the merchant's
        _assert_refused(confirm(client, service_token, plain["id"], pa_res, md), 469)


def test_missing_fields_and_token(gateway: Gateway) -> None:
    with gateway.client() as client:
        pending = start(gateway, client)
        response = client.post(
            "/payment/confirm",
            json={"ID": pending.id},
            headers={"Authorization": f"Bearer {pending.token}"},
        )
        _assert_refused(response, 477)
        assert client.post("/payment/confirm", json={}).status_code == 401
        bad_acs = client.post("/acs/pa", data={"PaReq": "eJxx", "MD": "1", "TermUrl": TERM_URL})
        assert bad_acs.status_code == 400
        js = client.post(
            pending.secure3d["action"],
            data={
                "PaReq": pending.secure3d["paReq"],
                "MD": pending.secure3d["md"],
                "TermUrl": "javascript:alert(1)",
            },
        )
        assert js.status_code == 400 and "javascript:" not in js.text.split("</style>")[-1]


def test_expiry_fails_the_payment_with_473(database_url: str, tmp_path: Path) -> None:
    env = {"TOLEM_SECURE3D_TIMEOUT": "3"}  # room to pass the ACS before it runs out
    with start_gateway(tmp_path, database_url, extra_env=env) as gw, gw.client() as client:
        pending = start(gw, client)
        pa_res, md = pass_acs(client, pending)
        deadline = time.monotonic() + 20
        while status(gw, pending.id)[0] == "NEW" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status(gw, pending.id) == ("3D", 473, False)  # the sweep expired it
        late = confirm(client, pending.token, pending.id, pa_res, md)
        _assert_refused(late, 469)
        again = cryptopay(client, pending.token, payment_body(gw, pending.invoice))
        assert again.status_code == 200  # the expired attempt released the invoice


# --- helpers ------------------------------------------------------------------------


def _merchant(gw: Gateway, *extra: str) -> dict[str, str]:
    argv = [
        sys.executable,
        "-m",
        "tolem",
        "merchant",
        "create",
        "--name",
        "3DS shop",
        "--json",
        "--database-url",
        gw.database_url,
        *extra,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)
    creds: dict[str, str] = json.loads(out.stdout)
    return creds


def _token(client: httpx.Client, creds: dict[str, str], invoice: str) -> str:
    return str(
        token(
            client,
            invoice=invoice,
            terminal=creds["terminalId"],
            client_id=creds["clientId"],
            client_secret=creds["clientSecret"],
        )["access_token"]
    )


def _cryptogram(gw: Gateway, card: tuple[str, str, str], terminal: str) -> str:
    from tests.support import cryptogram

    return cryptogram(gw, *card, terminal=terminal)
