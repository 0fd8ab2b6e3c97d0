"""Bad input to the token endpoint and to cryptopay: a clear 4xx JSON error, never a 500.

Every refused payment is followed by proof that nothing changed: no transaction row
holds its invoice, and the same invoice is then paid with a valid request.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    TERMINAL,
    Gateway,
    cryptogram,
    new_invoice,
    payment_body,
    token,
)
from tolem.oauth.tokens import TokenSealer

INVOICE_FIELDS = {"invoiceId", "id", "reference", "accountId"}
DECLINE_465 = ("4003032704547597", "0920", "170")
MISSING = object()  # the field is left out
CHUNKED = object()  # a body of 70 KB streamed without Content-Length
FILE = object()  # a multipart file upload


class Raw(str):
    """A value sent as literal JSON text, e.g. ``1e400`` or ``NaN``."""


def cases(names: str, table: dict[str, tuple[Any, ...]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(names, list(table.values()), ids=list(table))


def assert_error(
    response: httpx.Response, status: int = 400, code: int | None = None, text: str = ""
) -> dict[str, Any]:
    """A 4xx JSON error with ``code`` and ``message``; payment errors add the invoice fields."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body["code"], int) and isinstance(body["message"], str), body
    assert body["message"].strip() and text.lower() in body["message"].lower(), body
    assert code is None or body["code"] == code, body
    if "/payment/" in response.request.url.path:
        assert body.keys() >= INVOICE_FIELDS, body
        assert all(isinstance(body[k], str) for k in INVOICE_FIELDS), body
    if status == 401:
        assert response.headers.get("www-authenticate") == "Bearer"
    return body


@dataclasses.dataclass
class Shop:
    """A shop talking to the gateway, plus a look into its database."""

    gw: Gateway
    client: httpx.Client
    engine: sa.Engine

    def token(self, invoice: str | None = None, **kwargs: Any) -> str:
        return str(token(self.client, invoice=invoice, **kwargs)["access_token"])

    def token_form(self, form: dict[str, str], multipart: bool = True) -> httpx.Response:
        if multipart:
            return self.client.post("/oauth2/token", files={k: (None, v) for k, v in form.items()})
        return self.client.post("/oauth2/token", data=form)

    def pay(self, tok: str | None, body: Any, **headers: str) -> httpx.Response:
        """POST a body (dict as JSON, else as is) to cryptopay with ``tok`` as the bearer."""
        if tok is not None:
            headers.setdefault("Authorization", f"Bearer {tok}")
        if isinstance(body, dict):
            body = json.dumps(body)
        return self.client.post("/payment/cryptopay", content=body, headers=headers)

    def rows(self, invoice: str) -> list[str]:
        """Statuses of the transactions that hold this invoice."""
        with self.engine.connect() as conn:
            query = sa.text("SELECT status FROM transactions WHERE invoice_id = :i")
            return sorted(row[0] for row in conn.execute(query, {"i": invoice}))

    def assert_untouched(self, invoice: str) -> None:
        """No transaction claimed the invoice: none exists, and a valid payment succeeds."""
        assert self.rows(invoice) == []
        ok = self.pay(self.token(invoice), payment_body(self.gw, invoice))
        assert ok.status_code == 200, ok.text
        assert (ok.json()["invoiceID"], ok.json()["status"]) == (invoice, "AUTH")
        assert self.rows(invoice) == ["AUTH"]

    @functools.cached_property
    def other(self) -> dict[str, str]:
        """A second merchant, created with the CLI as an operator would."""
        cli = ("merchant", "create", "--name", "Other shop", "--json")
        argv = [sys.executable, "-m", "tolem", *cli, "--database-url", self.gw.database_url]
        env = {**os.environ, "TOLEM_DATA_DIR": str(self.gw.data_dir)}
        out = subprocess.run(argv, env=env, capture_output=True, check=True, timeout=120)
        creds: dict[str, str] = json.loads(out.stdout)
        return creds

    def other_token(self, invoice: str | None) -> str:
        form = {"grant_type": "client_credentials", "client_id": self.other["clientId"]}
        form["client_secret"] = self.other["clientSecret"]
        if invoice:  # bound to the other merchant's terminal and to this invoice
            form |= {"terminal": self.other["terminalId"], "invoiceID": invoice, "amount": "100"}
        response = self.token_form(form)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def sealer(self) -> TokenSealer:
        return TokenSealer(base64.b64decode((self.gw.data_dir / "keys" / "token.key").read_text()))


@pytest.fixture(scope="module")
def shop(gateway: Gateway) -> Iterator[Shop]:
    engine = sa.create_engine(gateway.database_url)
    with gateway.client() as client:
        yield Shop(gateway, client, engine)
    engine.dispose()


# --- cryptopay: fields ------------------------------------------------------------------

REQUIRED = ("amount", "currency", "name", "cryptogram", "invoiceId", "description")
FIELDS: dict[str, tuple[dict[str, Any], int, str]] = {
    **{f"missing-{f}": ({f: MISSING}, 477, f"{f}: is required") for f in REQUIRED},
    "blank-name": ({"name": "   "}, 477, "name: is required"),
    "empty-description": ({"description": ""}, 477, "description: is required"),
    "amount-object": ({"amount": {"value": 100}}, 470, "amount: must be a number"),
    "amount-bool": ({"amount": True}, 470, "amount: must be a number"),
    "amount-list": ({"amount": [100]}, 470, "amount: must be a number"),
    "amount-null": ({"amount": None}, 470, "amount: must be a number"),
    "amount-text": ({"amount": "one hundred"}, 470, "amount: must be a number"),
    "amount-nan": ({"amount": Raw("NaN")}, 470, "amount: must be a number"),
    "amount-nan-text": ({"amount": "NaN"}, 470, "amount: must be a number"),
    "amount-zero": ({"amount": 0}, 470, "greater than zero"),
    "amount-negative": ({"amount": -100}, 470, "greater than zero"),
    "amount-negative-text": ({"amount": "-100"}, 470, "greater than zero"),
    "amount-3-decimals": ({"amount": 100.123}, 470, "at most two decimal places"),
    "amount-huge": ({"amount": Raw("1e400")}, 470, "amount: too large"),
    "amount-huge-text": ({"amount": "1e400"}, 470, "amount: too large"),
    "amount-tiny": ({"amount": Raw("1e-400")}, 470, "at most two decimal places"),
    "currency-number": ({"currency": 398}, 477, "currency: must be a three-letter"),
    "currency-long": ({"currency": "KZTT"}, 477, "currency: must be a three-letter"),
    "currency-non-ascii": ({"currency": "\u00dfk"}, 477, "currency: must be a three-letter"),
    "name-object": ({"name": {"first": "JON"}}, 477, "name: must be a string"),
    "description-list": ({"description": ["x"]}, 477, "description: must be a string"),
    "description-long": ({"description": "x" * 1001}, 477, "description: longer than"),
    "email-object": ({"email": {"a": 1}}, 477, "email: must be a string"),
    "invoice-5-digits": ({"invoiceId": "12345"}, 477, "invoiceId: must be 6 to 15 digits"),
    "invoice-16-digits": ({"invoiceId": "1" * 16}, 477, "invoiceId: must be 6 to 15 digits"),
    "invoice-letters": ({"invoiceId": "12345a789"}, 477, "invoiceId: must be 6 to 15 digits"),
    "invoice-negative": ({"invoiceId": "-1234567"}, 477, "invoiceId: must be 6 to 15 digits"),
    "invoice-arabic-digits": ({"invoiceId": "\u0661" * 7}, 477, "invoiceId: must be 6 to 15"),
    "invoice-number-5": ({"invoiceId": 12345}, 477, "invoiceId: must be 6 to 15 digits"),
    "invoice-number-16": ({"invoiceId": 10**15}, 477, "invoiceId: must be 6 to 15 digits"),
    "invoice-float": ({"invoiceId": 1234567.0}, 477, "invoiceId: must be a string"),
    "invoice-bool": ({"invoiceId": True}, 477, "invoiceId: must be a string"),
    "invoice-alt-short": ({"invoiceIdAlt": "12"}, 477, "invoiceIdAlt: must be 6 to 15"),
    "cardsave-maybe": ({"cardSave": "maybe"}, 477, "cardSave: must be true or false"),
    "cardsave-number": ({"cardSave": 2}, 477, "cardSave: must be true or false"),
    "postlink-javascript": ({"postLink": "javascript:alert(1)"}, 477, "postLink: must be"),
    "failurepostlink-data": ({"failurePostLink": "data:text/html,x"}, 477, "failurePostLink"),
    "terminal-too-long": ({"terminalId": "x" * 100}, 477, "terminalId: longer than"),
    "terminal-other": ({"terminalId": str(uuid.UUID(int=7))}, 487, "terminalId does not match"),
    "nul-in-name": ({"name": "JON\u0000"}, 477, "NUL"),
    "lone-surrogate": ({"accountId": "\ud800"}, 477, "lone surrogate"),
}


@cases("change,code,text", FIELDS)
def test_bad_field_is_refused_and_changes_nothing(
    shop: Shop, change: dict[str, Any], code: int, text: str
) -> None:
    invoice = new_invoice()
    body = payment_body(shop.gw, invoice) | change
    content = json.dumps({k: v for k, v in body.items() if v is not MISSING})
    for value in change.values():
        if isinstance(value, Raw):  # "1e400" -> 1e400
            content = content.replace(json.dumps(value), value)
    error = assert_error(shop.pay(shop.token(invoice), content), 400, code, text)
    assert error["id"] == "" and error["reference"] == ""
    if body["invoiceId"] == invoice and text not in ("NUL", "lone surrogate"):
        assert (error["invoiceId"], error["accountId"]) == (invoice, "uuid000001")
    shop.assert_untouched(invoice)


@pytest.mark.parametrize("amount", ["100", "100.00", " 100 ", 100.0])
@pytest.mark.parametrize("currency", ["KZT", "kzt"])
def test_numeric_string_amount_and_lowercase_currency_are_accepted(
    shop: Shop, amount: Any, currency: str
) -> None:
    invoice = new_invoice()
    body = payment_body(shop.gw, invoice, amount=amount, currency=currency)
    response = shop.pay(shop.token(invoice), body)
    assert response.status_code == 200, response.text
    assert (response.json()["amount"], response.json()["currency"]) == (100, "KZT")


def test_currency_the_terminal_does_not_take(shop: Shop) -> None:
    invoice = new_invoice()
    service = shop.token()  # no invoice and no currency bound: the terminal decides
    response = shop.pay(service, payment_body(shop.gw, invoice, currency="EUR"))
    assert assert_error(response, 400, 100, "does not accept EUR")["invoiceId"] == invoice
    shop.assert_untouched(invoice)


def test_cyrillic_cryptogram_key_and_invoice_id_spelling_are_accepted(shop: Shop) -> None:
    invoice = new_invoice()
    body = payment_body(shop.gw, invoice)
    body["\u0441ryptogram"] = body.pop("cryptogram")
    body["invoiceID"] = body.pop("invoiceId")
    response = shop.pay(shop.token(invoice), body)
    assert response.status_code == 200, response.text
    assert (response.json()["invoiceID"], response.json()["status"]) == (invoice, "AUTH")


# --- cryptopay: invoices already taken --------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("", ""), ("000", "999"), ("", "9" * 9)])
def test_taken_invoice_is_refused(shop: Shop, first: str, second: str) -> None:
    """A paid invoice, or another one sharing its last six digits, cannot be paid again."""
    tail = new_invoice(6)
    paid, again = first + tail, second + tail
    assert shop.pay(shop.token(paid), payment_body(shop.gw, paid)).status_code == 200
    response = shop.pay(shop.token(again), payment_body(shop.gw, again))
    error = assert_error(response, 400, 100, "is already used")
    assert "last six digits" in error["message"]
    assert (error["invoiceId"], error["id"]) == (again, "")
    assert shop.rows(paid) == ["AUTH"]
    assert shop.rows(again) == (["AUTH"] if again == paid else [])


def test_declined_invoice_is_released_and_may_be_retried(shop: Shop) -> None:
    """tolem's documented choice: a declined order may be paid again with its invoice."""
    invoice = new_invoice()
    tok = shop.token(invoice)
    declined = shop.pay(tok, payment_body(shop.gw, invoice, card=DECLINE_465))
    error = assert_error(declined, 400, 465)
    assert error["invoiceId"] == invoice and error["id"]  # the declined transaction's id
    assert shop.rows(invoice) == ["FAILED"]
    retry = shop.pay(tok, payment_body(shop.gw, invoice))
    assert retry.status_code == 200, retry.text
    assert shop.rows(invoice) == ["AUTH", "FAILED"]


# --- cryptopay: tokens ------------------------------------------------------------------


def _expired(shop: Shop, invoice: str) -> str:
    claims = shop.sealer().open(shop.token(invoice))
    return shop.sealer().seal(dataclasses.replace(claims, expires_at=int(time.time()) - 5))


def _another_key(shop: Shop, invoice: str) -> str:
    return TokenSealer(os.urandom(32)).seal(shop.sealer().open(shop.token(invoice)))


def _tampered(shop: Shop, invoice: str) -> str:
    tok = shop.token(invoice)
    return tok[:20] + ("B" if tok[20] == "A" else "A") + tok[21:]


def _header(value: str | None) -> Callable[[Shop, str], str | None]:
    return lambda shop, invoice: value


def _bound(**binding: Any) -> Callable[[Shop, str], str]:
    return lambda shop, invoice: shop.token(**({"invoice": invoice} | binding))


TOKENS: dict[str, tuple[Callable[[Shop, str], str | None], bool, int, int, str]] = {
    "missing": (_header(None), False, 401, 100, "Authorization header"),
    "bearer-alone": (_header("Bearer"), False, 401, 100, "Bearer <access_token>"),
    "basic-scheme": (_header("Basic dGVzdDp0ZXN0"), False, 401, 100, "Bearer <access_token>"),
    "malformed": (_header("Bearer not-a-token!"), False, 401, 100, "invalid access token"),
    "too-short": (_header("Bearer abc"), False, 401, 100, "invalid access token"),
    "tampered": (_tampered, True, 401, 100, "invalid access token"),
    "another-key": (_another_key, True, 401, 100, "invalid access token"),
    "expired": (_expired, True, 401, 100, "access token expired"),
    "other-invoice": (_bound(invoice=new_invoice()), True, 400, 100, "bound to invoice"),
    "other-amount": (_bound(amount=200), True, 400, 470, "bound to amount"),
    "other-currency": (_bound(currency="USD"), True, 400, 100, "bound to currency"),
    "other-terminal": (Shop.other_token, True, 400, 487, "names another terminal"),
    "other-client": (lambda s, _: s.other_token(None), True, 400, 464, "terminal not found"),
}


@cases("make,bearer,status,code,text", TOKENS)
def test_bad_token_is_refused_and_changes_nothing(
    shop: Shop, make: Callable[..., str | None], bearer: bool, status: int, code: int, text: str
) -> None:
    invoice = new_invoice()
    made = make(shop, invoice)
    headers = {} if made is None else {"Authorization": f"Bearer {made}" if bearer else made}
    response = shop.pay(None, payment_body(shop.gw, invoice), **headers)
    error = assert_error(response, status, code, text)
    assert (error["invoiceId"], error["id"]) == (invoice, "")
    shop.assert_untouched(invoice)


# --- cryptopay: cryptograms -------------------------------------------------------------


def _encrypt(plain: bytes, key: rsa.RSAPublicKey | None = None) -> Callable[[Gateway], str]:
    def make(gw: Gateway) -> str:
        public = key or gw.public_key
        return base64.b64encode(public.encrypt(plain, padding.PKCS1v15())).decode()

    return make


def _card(**claims: Any) -> bytes:
    card = {"hpan": "4405639704015096", "expDate": "0125", "cvc": "815", "terminalId": TERMINAL}
    return json.dumps({k: v for k, v in (card | claims).items() if v is not MISSING}).encode()


def _random(size: int | None = None) -> Callable[[Gateway], str]:
    return lambda gw: base64.b64encode(os.urandom(size or gw.public_key.key_size // 8)).decode()


_OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
CRYPTOGRAMS: dict[str, tuple[Callable[[Gateway], Any], int, str]] = {
    "not-base64": (lambda gw: "%%% not base64 %%%", 477, "not standard base64"),
    "urlsafe-base64": (lambda gw: "-_-_" * 8, 477, "not standard base64"),
    "a-number": (lambda gw: 12345, 477, "not standard base64"),
    "wrong-length": (_random(100), 477, "does not decrypt"),
    "random-bytes": (_random(), 477, "does not decrypt"),
    "another-rsa-key": (_encrypt(_card(), _OTHER_RSA), 477, "does not decrypt"),
    "not-json": (_encrypt(b"hpan=4405639704015096"), 477, "does not decrypt"),
    "json-list": (_encrypt(b"[1, 2]"), 477, "JSON object"),
    "no-hpan": (_encrypt(_card(hpan=MISSING)), 477, "hpan"),
    "bad-hpan": (_encrypt(_card(hpan="4405x")), 477, "hpan"),
    "bad-expiry": (_encrypt(_card(expDate="1/2")), 477, "expDate"),
    "no-terminal": (_encrypt(_card(terminalId=MISSING)), 477, "terminalId"),
    "nul-terminal": (_encrypt(_card(terminalId="\0")), 477, "terminalId"),
    "other-terminal": (
        lambda gw: cryptogram(gw, "4405639704015096", "0125", "815", str(uuid.uuid4())),
        487,
        "names another terminal",
    ),
}


@cases("make,code,text", CRYPTOGRAMS)
@pytest.mark.parametrize("service", [False, True], ids=["bound-token", "service-token"])
def test_bad_cryptogram_is_refused_and_changes_nothing(
    shop: Shop, make: Callable[[Gateway], Any], code: int, text: str, service: bool
) -> None:
    invoice = new_invoice()
    if service:  # a token without terminal: the cryptogram's terminalId is taken as given
        form = {"grant_type": "client_credentials", "client_id": CLIENT_ID}
        tok = str(shop.token_form(form | {"client_secret": CLIENT_SECRET}).json()["access_token"])
        if code == 487:
            code, text = 464, "terminal not found"  # a terminal this client does not own
    else:
        tok = shop.token(invoice)
    response = shop.pay(tok, payment_body(shop.gw, invoice, cryptogram=make(shop.gw)))
    error = assert_error(response, 400, code, text)
    assert (error["invoiceId"], error["id"]) == (invoice, "")
    shop.assert_untouched(invoice)


def test_every_decryption_failure_gives_the_same_answer(shop: Shop) -> None:
    """No padding oracle: wrong length, bad padding and non-JSON plaintext look alike."""
    answers = set()
    for name in ("wrong-length", "random-bytes", "another-rsa-key", "not-json"):
        invoice = new_invoice()
        body = payment_body(shop.gw, invoice, cryptogram=CRYPTOGRAMS[name][0](shop.gw))
        error = shop.pay(shop.token(invoice), body).json()
        answers.add((error["code"], error["message"]))
    assert len(answers) == 1, answers


# --- cryptopay: bodies ------------------------------------------------------------------


def _chunks() -> Iterator[bytes]:
    yield b'{"description": "'
    yield from (b"x" * 4096 for _ in range(17))
    yield b'"}'


BODIES: dict[str, tuple[Any, int, str]] = {
    "over-64k": (b'{"description": "' + b"x" * 70_000 + b'"}', 413, "larger than 65536"),
    "over-64k-chunked": (CHUNKED, 413, "larger than 65536"),
    "deep-arrays": (b"[" * 10_000, 400, "nested deeper"),
    "deep-objects": (b'{"a":' * 10_000, 400, "nested deeper"),
    "not-json": (b"amount=100&currency=KZT", 400, "not valid JSON"),
    "truncated-json": (b'{"amount": 100,', 400, "not valid JSON"),
    "invalid-utf8": (b'{"name": "\xff\xfe"}', 400, "not valid JSON"),
    "huge-integer": (b'{"amount": 1' + b"0" * 5000 + b"}", 400, "not valid JSON"),
    "json-array": (b'[{"amount": 100}]', 400, "must be a JSON object"),
    "json-null": (b"null", 400, "must be a JSON object"),
    "json-string": (b'"cryptopay"', 400, "must be a JSON object"),
    "empty": (b"", 400, "empty body"),
    "whitespace": (b" \r\n ", 400, "empty body"),
}


@cases("content,status,text", BODIES)
def test_bad_body_is_refused_and_changes_nothing(
    shop: Shop, content: Any, status: int, text: str
) -> None:
    invoice = new_invoice()
    response = shop.pay(shop.token(invoice), _chunks() if content is CHUNKED else content)
    error = assert_error(response, status, 477, text)
    assert (error["invoiceId"], error["id"]) == ("", "")
    shop.assert_untouched(invoice)


# --- the token endpoint -----------------------------------------------------------------

GOOD_FORM = {"grant_type": "client_credentials", "client_id": CLIENT_ID}
GOOD_FORM |= {"client_secret": CLIENT_SECRET, "terminal": TERMINAL, "scope": "payment"}
GOOD_FORM |= {"invoiceID": "123456789", "amount": "100", "currency": "KZT"}
BAD = "invalid_request"
TOKEN_FORMS: dict[str, tuple[dict[str, Any], int, str, str]] = {
    "wrong-secret": ({"client_secret": "x" * 36}, 401, "invalid_client", "invalid client"),
    "unknown-client": ({"client_id": "nobody"}, 401, "invalid_client", "invalid client"),
    "no-secret": ({"client_secret": MISSING}, 400, BAD, "client_secret are required"),
    "no-grant-type": ({"grant_type": MISSING}, 400, BAD, "grant_type is required"),
    "password-no-user": ({"grant_type": "password"}, 400, BAD, "username and password are"),
    "code-grant": ({"grant_type": "authorization_code"}, 400, "unsupported_grant_type", "code"),
    "invoice-short": ({"invoiceID": "12345"}, 400, BAD, "invoiceID: must be 6 to 15"),
    "invoice-letters": ({"invoiceID": "INV-123456"}, 400, BAD, "invoiceID: must be 6 to 15"),
    "invoice-arabic": ({"invoiceID": "\u0661" * 7}, 400, BAD, "invoiceID: must be 6 to 15"),
    "amount-negative": ({"amount": "-100"}, 400, BAD, "amount: must be greater than zero"),
    "amount-text": ({"amount": "lots"}, 400, BAD, "amount: must be a number"),
    "amount-huge": ({"amount": "1e400"}, 400, BAD, "amount: too large"),
    "amount-3-decimals": ({"amount": "100.123"}, 400, BAD, "at most two decimal places"),
    "currency-eur": ({"currency": "EUR"}, 400, BAD, "terminal does not accept EUR"),
    "currency-bad": ({"currency": "K1"}, 400, BAD, "currency: must be a three-letter"),
    "unknown-terminal": ({"terminal": str(uuid.uuid4())}, 400, BAD, "no such terminal"),
    "postlink-js": ({"postLink": "javascript:alert(1)"}, 400, BAD, "postLink: must be an http"),
    "failure-link-ftp": ({"failurePostLink": "ftp://x/y"}, 400, BAD, "failurePostLink: must"),
    "nul-client-id": ({"client_id": "te\0st"}, 400, BAD, "NUL"),
    "nul-terminal": ({"terminal": "\0"}, 400, BAD, "NUL"),
}


@cases("change,status,error,text", TOKEN_FORMS)
@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "urlencoded"])
def test_bad_token_request_is_refused(
    shop: Shop, change: dict[str, Any], status: int, error: str, text: str, multipart: bool
) -> None:
    form = {k: v for k, v in (GOOD_FORM | change).items() if v is not MISSING}
    body = assert_error(shop.token_form(form, multipart), status, 100, text)
    assert body["error"] == error and body["error_description"] == body["message"]
    assert "access_token" not in body


TOKEN_BODIES: dict[str, tuple[Any, str, int, str]] = {
    "form-over-64k": (GOOD_FORM | {"scope": "x" * 70_000}, "", 413, "larger than 65536"),
    "form-over-64k-chunked": (CHUNKED, "application/x-www-form-urlencoded", 413, "larger than"),
    "empty": (b"", "", 400, "grant_type is required"),
    "json-array": (b"[1]", "application/json", 400, "must be a JSON object"),
    "json-broken": (b'{"grant_type":', "application/json", 400, "not valid JSON"),
    "json-deep": (b"[" * 10_000, "application/json", 400, "nested deeper"),
    "json-surrogate": (b'{"grant_type": "\\ud800"}', "application/json", 400, "surrogate"),
    "json-object-value": (
        b'{"grant_type": "password", "username": "epay@halykbank.kz", "password": {"a": 1}}',
        "application/json",
        400,
        "password: a string or a number is expected",
    ),
    "file-upload": (FILE, "", 400, "files are not accepted"),
}


@cases("content,content_type,status,text", TOKEN_BODIES)
def test_bad_token_body_is_refused(
    shop: Shop, content: Any, content_type: str, status: int, text: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if isinstance(content, dict):
        response = shop.client.post("/oauth2/token", data=content)
    elif content is FILE:
        files = {"f": ("a.txt", b"x")}
        response = shop.client.post("/oauth2/token", data=GOOD_FORM, files=files)
    else:
        chunks = _chunks() if content is CHUNKED else content
        response = shop.client.post("/oauth2/token", content=chunks, headers=headers)
    assert_error(response, status, text=text)


@pytest.mark.parametrize("path", ["/oauth2/token", "/epay2/oauth2/token", "/payment/cryptopay"])
def test_cors_preflight_is_answered(shop: Shop, path: str) -> None:
    headers = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    headers["Access-Control-Request-Headers"] = "authorization, content-type"
    response = shop.client.options(path, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] in ("*", "https://shop.example")
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize(
    "path",
    ["/oauth2/token", "/payment/cryptopay", "/api/payment/cryptopay", "/payments/cards/auth"],
)
def test_client_gone_mid_body_is_not_an_error(shop: Shop, path: str) -> None:
    """A client that closes its connection before sending the whole body: nothing runs,
    the access line says 499, and no error (nor traceback) is logged."""
    before = len(shop.gw.log_text())
    bearer = shop.token(new_invoice())
    url = urlsplit(shop.gw.base_url)
    with socket.create_connection((url.hostname, url.port)) as raw:
        raw.sendall(
            f"POST {path} HTTP/1.1\r\nHost: tolem\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {bearer}\r\nContent-Length: 500\r\n\r\n"
            '{"amount": 100, "currency": '.encode()
        )
        time.sleep(0.2)  # the request is under way, waiting for the rest of its body
    line = f'"POST {path} HTTP/1.1" 499'
    deadline = time.monotonic() + 10
    while line not in (log := shop.gw.log_text()[before:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in log, log
    assert "unhandled error" not in log and "Traceback" not in log, log


# --- links bound in the token ---------------------------------------------------------


def test_body_cannot_redirect_a_postlink_bound_in_the_token(shop: Shop) -> None:
    invoice = new_invoice()
    bound = {"postLink": "https://shop.kz/notify", "failurePostLink": "https://shop.kz/fail"}
    tok = shop.token(invoice, **bound)
    for name in bound:
        body = payment_body(shop.gw, invoice) | bound | {name: "https://evil.example/steal"}
        assert_error(shop.pay(tok, body), 400, 100, f"{name} differs")
    shop.assert_untouched(invoice)


def test_body_links_apply_when_the_token_binds_none_or_the_same(shop: Shop) -> None:
    invoice = new_invoice()
    tok = shop.token(invoice, postLink="https://shop.kz/notify")
    body = payment_body(shop.gw, invoice) | {"postLink": "https://shop.kz/notify"}
    # A token that binds a link lets the body add no link of its own: a failure would
    # go to the body's failurePostLink, with the token's secret_hash.
    assert_error(shop.pay(tok, body), 400, 100, "failurePostLink differs")
    shop.assert_untouched(invoice)  # (it pays the invoice to prove it)

    invoice = new_invoice()
    tok = shop.token(invoice, postLink="https://shop.kz/notify")
    body = payment_body(shop.gw, invoice) | {"postLink": "https://shop.kz/notify"}
    body.pop("failurePostLink")
    second = shop.pay(tok, body)
    assert second.status_code == 200, second.text
    with shop.engine.connect() as conn:
        links = conn.execute(
            sa.text("SELECT post_link, failure_post_link FROM transactions WHERE invoice_id = :i"),
            {"i": invoice},
        ).one()
    assert tuple(links) == ("https://shop.kz/notify", "")

    # A token that binds no link takes the body's.
    other = new_invoice()
    answer = shop.pay(shop.token(other), payment_body(shop.gw, other))
    assert answer.status_code == 200, answer.text
