"""Driving the hosted payment page (/payform/) over plain HTTP, as halyk.pay() and a browser.

The link is built exactly as the shop's script builds it (``payment-api.js``):
``<payform>/?params=`` + ``LZString.compressToEncodedURIComponent(encodeParams(obj))``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx

from tests.support import TERMINAL, Gateway, new_invoice, query, token
from tolem.payform.lzstring import compress_to_encoded_uri_component

#: Test cards as the cardholder types them: (PAN, MM/YY, CVC).
VISA = ("4405639704015096", "01/25", "815")
DECLINED_484 = ("5578342710750560", "09/20", "254")

BACK_LINK = "https://example.kz/success.html"
FAILURE_BACK_LINK = "https://example.kz/failure.html"


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


#: An override that removes the key from the payment object (None stays: JS null).
OMIT: Any = _Omit()


def encode_uri_component(value: str) -> str:
    """JavaScript's encodeURIComponent."""
    return quote(value, safe="-_.!~*'()")


def _js_string(value: Any) -> str:
    """``"" + value`` in JavaScript for the scalars a payment object holds."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    return str(value)


def encode_params(obj: Any) -> str:
    """The live script's encodeParams: ``key=encodeURIComponent(encodeParams(v))`` by ``&``."""
    if obj is None:
        return ""
    if not isinstance(obj, dict):
        return _js_string(obj)
    return "&".join(
        f"{name}={encode_uri_component(encode_params(value))}"
        for name, value in obj.items()
        if name  # `if (name)`: an empty key is skipped
    )


def params_value(obj: Any) -> str:
    return compress_to_encoded_uri_component(encode_params(obj))


def payform_link(gw: Gateway, obj: Any, **flags: Any) -> str:
    """The page URL halyk.pay() opens; flags (isShortForm=True, …) are appended as-is."""
    extra = "".join(f"&{k}={_js_string(v)}" for k, v in flags.items())
    return f"{gw.base_url}/payform/?params={params_value(obj)}{extra}"


def params_of(link: str) -> str:
    """The ``params`` value of a page link, as written (LZString's alphabet needs no decoding)."""
    [value] = [
        v
        for k, _, v in (p.partition("=") for p in urlsplit(link).query.split("&"))
        if k == "params"
    ]
    return value


def payment_object(tok: dict[str, Any], invoice: str, **overrides: Any) -> dict[str, Any]:
    """The original document's payment object, ``auth`` = the whole token response."""
    obj: dict[str, Any] = {
        "invoiceId": invoice,
        "invoiceIdAlt": "8564546",
        "backLink": BACK_LINK,
        "failureBackLink": FAILURE_BACK_LINK,
        "postLink": "https://testmerchant/order/1123",
        "failurePostLink": "https://testmerchant/order/1123/fail",
        "language": "RU",
        "description": "Оплата в интернет магазине",
        "accountId": "testuser1",
        "terminal": TERMINAL,
        "amount": 100,
        "data": '{"statement":{"name":"Arman Ali","invoiceID":"80000016"}}',
        "currency": "KZT",
        "phone": "77777777777",
        "email": "example@example.com",
        "auth": tok,
    }
    for key, value in overrides.items():
        if value is OMIT:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


@dataclass
class Order:
    """One shop order and the page link for it."""

    invoice: str
    token: dict[str, Any]
    obj: dict[str, Any]
    link: str

    @property
    def params(self) -> str:
        return params_of(self.link)


def order(
    gw: Gateway,
    client: httpx.Client,
    *,
    amount: Any = 100,
    currency: str = "KZT",
    flags: dict[str, Any] | None = None,
    **overrides: Any,
) -> Order:
    """A fresh invoice, its token (bound to invoice and amount) and the page link."""
    invoice = new_invoice()
    tok = token(client, invoice=invoice, amount=amount, currency=currency)
    obj = payment_object(tok, invoice, amount=amount, currency=currency, **overrides)
    return Order(invoice, tok, obj, payform_link(gw, obj, **(flags or {})))


def open_page(client: httpx.Client, link: str) -> httpx.Response:
    return client.get(link, follow_redirects=False)


def submit(
    client: httpx.Client,
    params: str,
    card: tuple[str, str, str] = VISA,
    *,
    name: str = "ARMAN ALI",
    email: str = "payer@example.kz",
    phone: str = "+77001234567",
    short: bool = False,
) -> httpx.Response:
    """POST the card form as the browser does; the 303 is not followed."""
    pan, exp, cvc = card
    form = {
        "params": params,
        "pan": pan,
        "exp": exp,
        "cvc": cvc,
        "name": name,
        "email": email,
        "phone": phone,
    }
    if short:
        form["isShortForm"] = "true"
    return client.post("/payform/pay", data=form, follow_redirects=False)


def location(response: httpx.Response) -> str:
    assert response.status_code == 303, (response.status_code, response.text)
    return response.headers["location"]


def follow(client: httpx.Client, response: httpx.Response) -> httpx.Response:
    """One step of a 303: GET its Location, not following further."""
    return client.get(location(response), follow_redirects=False)


RESULT_PATH = re.compile(r"^/payform/(result|3ds)/([0-9a-f-]{36})\?(.*)$")


def state_url(response: httpx.Response) -> tuple[str, str, dict[str, str]]:
    """(kind, transaction id, query) of a 303 to a payment's own page."""
    match = RESULT_PATH.match(location(response))
    assert match, location(response)
    q = {k: v[0] for k, v in parse_qs(match.group(3)).items()}
    return match.group(1), match.group(2), q


def element(page: str, element_id: str) -> str:
    """The text of the element with this id (no nested tags expected), unescaped."""
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', page)
    assert match, f"no #{element_id} in page:\n{page}"
    return html.unescape(match.group(1)).strip()


def attribute(page: str, element_id: str, name: str) -> str:
    match = re.search(rf'<[^>]*id="{element_id}"[^>]*>', page)
    assert match, f"no #{element_id} in page:\n{page}"
    value = re.search(rf'\s{name}="([^"]*)"', match.group(0))
    assert value, match.group(0)
    return html.unescape(value.group(1))


def transactions(gw: Gateway, invoice: str) -> list[Any]:
    """Rows (id, status, reason_code, amount_charged, card_id, reference) of an invoice."""
    return query(
        gw.database_url,
        "SELECT id, status, reason_code, amount_charged, card_id, reference"
        " FROM transactions WHERE invoice_id = :i ORDER BY created_at",
        i=invoice,
    )


def with_query(link: str, **values: str) -> str:
    """``link`` + ``?`` + the values, as tolem appends them to a back link."""
    return f"{link}?{urlencode(values)}"
