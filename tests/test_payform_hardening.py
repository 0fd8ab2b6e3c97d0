"""What a review of the hosted page found, kept fixed: each case once gave a 500, let the
cardholder change what the shop meant, stored card data, or let a page be dressed up."""

from __future__ import annotations

import re

from tests.payform_support import (
    element,
    location,
    open_page,
    order,
    payform_link,
    payment_object,
    state_url,
    submit,
    transactions,
)
from tests.support import Gateway, new_invoice, token


def test_a_malformed_link_is_a_400_not_a_500(gateway: Gateway) -> None:
    with gateway.client() as client:
        for bad in ("http://[::1", "http://[", "https://a\uff03b.kz/", "http://shop.kz:99999/"):
            o = order(gateway, client, backLink=bad)
            page = open_page(client, o.link)
            assert page.status_code == 400, (bad, page.status_code)
            assert "backLink: must be an http or https URL" in page.text
        # The token endpoint shares the rule.
        answer = client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "test",
                "client_secret": "yF587AV9Ms94qN2QShFzVR3vFnWkhjbAK3sG",
                "postLink": "http://[",
            },
        )
        assert answer.status_code == 400 and "postLink" in answer.json()["message"]


def test_deeply_nested_auth_is_an_expired_session_not_a_500(gateway: Gateway) -> None:
    with gateway.client() as client:
        invoice = new_invoice()
        link = payform_link(
            gateway, {"invoiceId": invoice, "amount": 100, "auth": "{" * 1 + '"a":' + "[" * 3000}
        )
        page = open_page(client, link)
        posted = client.post("/payform/pay", data={"params": link.split("params=")[1]})
    assert page.status_code == 401 and posted.status_code == 401


def test_the_page_needs_a_token_bound_to_invoice_amount_and_currency(gateway: Gateway) -> None:
    """Otherwise the cardholder, who holds the link, could pay 1 instead of 100."""
    with gateway.client() as client:
        invoice = new_invoice()
        service = token(client)  # no invoice, amount or currency: a service token
        page = open_page(client, payform_link(gateway, payment_object(service, invoice, amount=1)))
        assert page.status_code == 400
        assert "needs a token bound to invoiceID, amount and currency" in page.text
        bound = token(client, invoice=invoice, amount=100)  # what the page wants
        # A token with the invoice but no amount: issued by hand without amount/currency.
        bare = client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "test",
                "client_secret": "yF587AV9Ms94qN2QShFzVR3vFnWkhjbAK3sG",
                "terminal": "67e34d63-102f-4bd1-898e-370781d0074d",
                "invoiceID": invoice,
            },
        ).json()
        page = open_page(client, payform_link(gateway, payment_object(bare, invoice, amount=1)))
        assert page.status_code == 400
        assert (
            open_page(client, payform_link(gateway, payment_object(bound, invoice))).status_code
            == 200
        )
    assert transactions(gateway, invoice) == []


def test_a_new_order_on_a_paid_invoice_is_refused_not_shown_as_paid(gateway: Gateway) -> None:
    with gateway.client() as client:
        first = order(gateway, client)
        assert state_url(submit(client, first.params))[0] == "result"
        again = token(client, invoice=first.invoice, amount=5000)
        link = payform_link(
            gateway, payment_object(again, first.invoice, amount=5000, autoBackLink=True)
        )
        page = open_page(client, link)
    assert page.status_code == 400
    assert f"invoice {first.invoice} is already used" in page.text


def test_a_card_number_in_a_text_field_is_refused(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        for field, value in (
            ("name", "4405 6397 0401 5096"),
            ("email", "4405639704015096@example.kz"),
            ("phone", "4405-6397-0401-5096"),
        ):
            posted = submit(client, o.params, **{field: value})
            assert posted.status_code == 400, field
            assert "4405639704015096" not in posted.text
            assert "4405 6397 0401 5096" not in posted.text
        # A phone number is not a card number.
        assert submit(client, o.params, phone="+7 700 123 45 67").status_code == 303
    assert [row.status for row in transactions(gateway, o.invoice)] == ["AUTH"]


def test_confirms_result_pages_show_only_the_reason_codes_text(gateway: Gateway) -> None:
    with gateway.client() as client:
        page = client.get("/payform/?code=484&message=Your+order+is+paid.+Call+%2B7700")
        success = client.get("/payform/success.html?invoiceID=000000001&amount=100")
    assert page.status_code == 200
    assert element(page.text, "reason") == "484: Insufficient funds"
    assert "Call" not in page.text
    for response in (page, success):
        assert "frame-ancestors 'self'" in response.headers["content-security-policy"]


def test_the_shops_back_link_query_is_kept_as_it_was(gateway: Gateway) -> None:
    back = "https://example.kz/ok?a=%FF&b&c=1+2"
    with gateway.client() as client:
        o = order(gateway, client, backLink=back, autoBackLink=True)
        result = client.get(location(submit(client, o.params)), follow_redirects=False)
    assert result.status_code == 303
    assert location(result).startswith(f"{back}&invoiceId={o.invoice}&status=AUTH&reference=")


def test_an_idn_back_link_uses_the_browsers_punycode(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client, backLink="https://straße.kz/ok")
        page = open_page(client, o.link)
    policy = page.headers["content-security-policy"]
    assert re.search(r"form-action 'self' https://example\.kz https://xn--strae-oqa\.kz;", policy)


def test_page_keys_are_not_logged(gateway: Gateway) -> None:
    with gateway.client() as client:
        _kind, tx_id, q = state_url(submit(client, order(gateway, client).params))
        assert client.get(f"/payform/result/{tx_id}?k={q['k']}").status_code == 200
    assert q["k"] not in gateway.log_text()
