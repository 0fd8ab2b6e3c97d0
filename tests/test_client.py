"""The Python SDK (``tolem.client``), synchronous client, against a real ``tolem serve``.

Every public method of :class:`EpayClient` and every exception class is exercised here
on both databases; the pure model and helper checks need no gateway. The async client
has the same calls in ``test_client_async.py``, which reuses the helpers below.
"""

from __future__ import annotations

import html
import re
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

import tolem.client
from tests import secure3d_support as s3d
from tests.support import CLIENT_ID, CLIENT_SECRET, TERMINAL, Gateway, free_port, new_invoice, query
from tolem.client import (
    ApiError,
    AuthenticationError,
    Card,
    CardDataError,
    CardRestricted,
    ConfirmResult,
    Environment,
    EpayClient,
    EpayConnectionError,
    EpayError,
    ExpiredCard,
    InsufficientFunds,
    InvalidCard,
    InvalidRequest,
    InvalidSignature,
    IssuerDeclined,
    IssuerUnavailable,
    LimitExceeded,
    LostOrStolenCard,
    MerchantNotPermitted,
    NotFound,
    OperationResult,
    Payment,
    PaymentDeclined,
    PaymentRequest,
    PostLink,
    ProcessingError,
    ProtocolError,
    PublicKeyMismatch,
    SavedCard,
    Secure3D,
    Secure3DFailed,
    ServerError,
    Token,
    Transaction,
    check_secret_hash,
    error_for,
    key_fingerprint,
    load_public_key,
    parse_postlink,
    secure3d_form,
    verify_postlink_signature,
)
from tolem.client._errors import decline_class
from tolem.client._reasons import RUSSIAN
from tolem.notifications import signing
from tolem.payform.lzstring import decompress_from_encoded_uri_component
from tolem.processor.cards import trigger_pan
from tolem.reasons import REASONS

# --- shared with test_client_async.py ---------------------------------------------

VISA = Card.parse("4405639704015096", "01/25", "815")
DESCRIPTION = "tolem SDK test"
TERM_URL = s3d.TERM_URL
SERVICE_SCOPE = "webapi usermanagement email_send verification statement statistics payment"
POST_LINK = "https://shop.example/epay/postlink"
FAILURE_POST_LINK = "https://shop.example/epay/postlink-failed"

#: Every PaymentDeclined subclass that owns reason codes (ProcessingError takes the rest).
DECLINE_CLASSES: list[type[PaymentDeclined]] = [
    InsufficientFunds,
    ExpiredCard,
    InvalidCard,
    Secure3DFailed,
    CardRestricted,
    LostOrStolenCard,
    LimitExceeded,
    IssuerDeclined,
    IssuerUnavailable,
    MerchantNotPermitted,
]
#: Reason codes a payment answer names that are not declines of their own kind.
NOT_DECLINES = {477: InvalidRequest, 522: NotFound, 1373: NotFound}
#: The reason codes no subclass owns: a payment declined with one is a ProcessingError.
UNCLASSED = sorted(
    code
    for code in REASONS
    if code not in NOT_DECLINES and not any(code in cls.codes for cls in DECLINE_CLASSES)
)
CYRILLIC = re.compile("[\u0400-\u04ff]")


def card_for(code: int) -> Card:
    """The simulator's card that declines with ``code`` (any expiry, any CVC)."""
    return Card.parse(trigger_pan(code), "12/30", "123")


def order(**fields: Any) -> PaymentRequest:
    """A fresh order: a unique invoice, 100 KZT unless told, the fields ePay requires."""
    values: dict[str, Any] = {
        "invoice_id": new_invoice(),
        "amount": 100,
        "description": DESCRIPTION,
        "name": "JON JONSON",
    }
    return PaymentRequest(**(values | fields))


def account() -> str:
    return f"sdk-{new_invoice()}"


def client_options(**options: Any) -> dict[str, Any]:
    return {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "terminal_id": TERMINAL,
        **options,
    }


def key_refused(environment: Environment | str, cls: type[EpayError], **options: Any) -> EpayError:
    """The error of fetching the public key from ``environment``, of class ``cls``."""
    with (
        EpayClient(environment, **client_options(**options)) as client,
        pytest.raises(cls) as raised,
    ):
        client.public_key()
    return raised.value


def pem_of(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def assert_approved(
    payment: Payment, placed: PaymentRequest, *, mask: str = "440563...5096"
) -> None:
    assert isinstance(payment, Payment)
    assert payment.status == "AUTH"  # the sandbox terminal is two-step
    assert payment.code == 0
    assert not payment.needs_3ds and payment.secure3d is None
    assert isinstance(payment.amount, Decimal) and payment.amount == placed.amount
    assert payment.invoice_id == placed.invoice_id
    assert payment.card_mask == mask
    assert re.fullmatch(r"[0-9]{12}", payment.reference), payment.reference
    assert re.fullmatch(r"[0-9a-f-]{36}", payment.id), payment.id
    assert payment.approval_code


def assert_declined(
    error: EpayError, cls: type[EpayError], code: int, placed: PaymentRequest
) -> None:
    """A declined payment's exception: its class, the code, ePay's texts, the transaction."""
    assert type(error) is cls, (type(error), code)
    assert error.code == code
    assert error.status_code == 400
    assert error.transaction_id, error.body
    assert error.invoice_id == placed.invoice_id
    assert error.message == REASONS[code]
    assert error.message_ru == RUSSIAN[code]
    assert str(error) == f"{code} {REASONS[code]} (HTTP 400)"


def form_post(page: str) -> tuple[str, dict[str, str]]:
    """The first form of a page: its action and its hidden fields, unescaped."""
    action = re.search(r'<form method="post" action="([^"]*)"', page)
    assert action, page
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    return html.unescape(action.group(1)), {k: html.unescape(v) for k, v in fields}


def acs_answer(page: str, *, fail: bool) -> dict[str, str]:
    """What the cardholder submits on the ACS page: the sandbox code, or 'fail'."""
    _, fields = form_post(page)
    return fields | ({"action": "fail"} if fail else {"action": "confirm", "code": s3d.otp(page)})


def pass_acs(http: httpx.Client, secure3d: Secure3D, *, fail: bool = False) -> tuple[str, str]:
    """Follow the SDK's own 3-D Secure form through the simulator's ACS, as a browser
    would; the PaRes and MD that the ACS posts back to TermUrl."""
    action, fields = form_post(secure3d_form(secure3d, TERM_URL))
    page = http.post(action, data=fields)
    assert page.status_code == 200, page.text
    answer_url, _ = form_post(page.text)
    posted = http.post(urljoin(action, answer_url), data=acs_answer(page.text, fail=fail))
    assert posted.status_code == 200, posted.text
    term_url, result = form_post(posted.text)
    assert term_url == TERM_URL
    return result["PaRes"], result["MD"]


def payform_params(url: str) -> dict[str, str]:
    """The payment object inside a payform link, as the hosted page decodes it."""
    query_string = urlsplit(url).query
    packed = dict(parse_qsl(query_string, keep_blank_values=True))["params"]
    return dict(parse_qsl(decompress_from_encoded_uri_component(packed), keep_blank_values=True))


def notification_bodies(gateway: Gateway, transaction_id: str) -> list[tuple[str, str, str]]:
    """(id, url, body) of the postLinks the gateway wrote for a transaction, oldest first."""
    rows = query(
        gateway.database_url,
        "SELECT id, url, body FROM notifications WHERE transaction_id = :t ORDER BY created_at",
        t=transaction_id,
    )
    return [(r.id, r.url, r.body) for r in rows]


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture
def epay(gateway: Gateway) -> Iterator[EpayClient]:
    with EpayClient(gateway.base_url, **client_options()) as client:
        yield client


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


# --- the package's names ----------------------------------------------------------

PUBLIC_NAMES = [
    "PRODUCTION",
    "TEST",
    "ApiError",
    "AsyncEpayClient",
    "AuthenticationError",
    "Card",
    "CardDataError",
    "CardRestricted",
    "ClientOptions",
    "ConfirmResult",
    "Environment",
    "EpayClient",
    "EpayConnectionError",
    "EpayError",
    "ExpiredCard",
    "InsufficientFunds",
    "InvalidCard",
    "InvalidRequest",
    "InvalidSignature",
    "IssuerDeclined",
    "IssuerUnavailable",
    "LimitExceeded",
    "LostOrStolenCard",
    "MerchantNotPermitted",
    "NotFound",
    "OperationResult",
    "Payment",
    "PaymentDeclined",
    "PaymentRequest",
    "PostLink",
    "ProcessingError",
    "ProtocolError",
    "PublicKeyMismatch",
    "SavedCard",
    "Secure3D",
    "Secure3DFailed",
    "ServerError",
    "StatusResult",
    "Token",
    "Transaction",
    "build_cryptogram",
    "check_secret_hash",
    "encode_params",
    "error_for",
    "key_fingerprint",
    "load_public_key",
    "parse_postlink",
    "payform_url",
    "secure3d_form",
    "verify_postlink_signature",
]


def test_the_public_names_are_pinned() -> None:
    assert tolem.client.__all__ == PUBLIC_NAMES
    assert len(set(PUBLIC_NAMES)) == len(PUBLIC_NAMES)
    for name in PUBLIC_NAMES:
        assert getattr(tolem.client, name, None) is not None, name
    namespace: dict[str, Any] = {}
    exec("from tolem.client import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(PUBLIC_NAMES)
    # Every exception is exported and derives from EpayError.
    errors = {n for n in PUBLIC_NAMES if isinstance(getattr(tolem.client, n), type)}
    errors = {n for n in errors if issubclass(getattr(tolem.client, n), BaseException)}
    assert errors == {
        *(cls.__name__ for cls in DECLINE_CLASSES),
        "CardDataError",
        "ApiError", "AuthenticationError", "EpayConnectionError", "EpayError",
        "InvalidRequest", "InvalidSignature", "NotFound", "PaymentDeclined",
        "ProcessingError", "ProtocolError", "PublicKeyMismatch", "ServerError",
    }  # fmt: skip
    # Card input is refused before any request, as a ValueError; the rest come from the wire.
    assert errors - {"CardDataError"} == {
        n for n in errors if issubclass(getattr(tolem.client, n), EpayError)
    }
    assert issubclass(CardDataError, ValueError)
    # Classes name the public module in reprs and tracebacks, not a private one.
    for name in PUBLIC_NAMES:
        obj = getattr(tolem.client, name)
        if isinstance(obj, type):
            assert obj.__module__ == "tolem.client", name


# --- reason codes and error classes (no gateway) ----------------------------------


def test_every_reason_code_maps_to_exactly_one_class() -> None:
    assert set(RUSSIAN) == set(REASONS)
    assert ProcessingError.codes == frozenset()
    owned: set[int] = set()
    for cls in DECLINE_CLASSES:
        assert issubclass(cls, PaymentDeclined) and cls.codes, cls
        assert cls.codes <= set(REASONS), cls
        assert not cls.codes & owned, cls  # no code in two classes
        owned |= cls.codes
    for code in REASONS:
        owners = [cls for cls in DECLINE_CLASSES if code in cls.codes]
        assert len(owners) <= 1, code
        assert decline_class(code) is (owners[0] if owners else ProcessingError), code
    assert decline_class(9999) is ProcessingError
    assert UNCLASSED == [454, 460, 461, 469, 470, 475, 498, 501, 526, 1612, 1636, 1759]


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (400, {"code": 484, "message": "Insufficient funds"}, InsufficientFunds, 484),
        (400, {"code": "485"}, ExpiredCard, 485),  # a code as text, no message
        (400, {"reasonCode": 473}, Secure3DFailed, 473),
        (400, {"code": 461}, ProcessingError, 461),
        (400, {"code": 477, "message": "name: is required"}, InvalidRequest, 477),
        (400, {"code": 100, "message": "nope"}, ApiError, 100),
        (400, {"code": 522}, NotFound, 522),
        (400, {"code": 1373}, NotFound, 1373),
        (404, {}, NotFound, None),
        (401, {"error": "invalid_client"}, AuthenticationError, None),
        (400, {"error": "invalid_client"}, AuthenticationError, None),
        (500, {"code": 461, "message": "System error"}, ServerError, 461),
        (503, None, ServerError, None),
        (400, {"code": 99999}, ApiError, 99999),  # a code not in the table
    ],
)
def test_error_for_chooses_the_class(
    status: int, body: dict[str, Any] | None, cls: type[EpayError], code: int | None
) -> None:
    error = error_for(status, body)
    assert type(error) is cls
    assert (error.status_code, error.code) == (status, code)
    assert error.message  # the gateway's text, the table's text, or "HTTP <status>"
    if code in REASONS and not (body or {}).get("message"):
        assert error.message == REASONS[code]
    if code in RUSSIAN:
        assert error.message_ru == RUSSIAN[code]
    assert CYRILLIC.search(error.message_ru), error.message_ru


# --- Card, PaymentRequest and the answers' models (no gateway) --------------------


@pytest.mark.parametrize(
    ("pan", "exp"),
    [
        ("4405639704015096", "01/25"),
        ("4405639704015096", "0125"),
        ("4405639704015096", "01/2025"),
        ("4405 6397 0401 5096", "01/25"),
        (" 4405 6397\t0401 5096 ", "01/2025"),
    ],
)
def test_card_parse_accepts_the_usual_spellings(pan: str, exp: str) -> None:
    card = Card.parse(pan, exp, " 815 ")
    assert (card.pan, card.exp, card.cvc) == ("4405639704015096", "0125", "815")
    assert card.mask == "440563...5096"


def test_card_never_shows_its_number_or_cvc() -> None:
    card = Card.parse("4405639704015096", "01/25", "815")
    for text in (repr(card), str(card), f"{card}", f"{card!r}", "%s" % (card,), repr([card])):  # noqa: UP031
        assert "4405639704015096" not in text and "815" not in text, text
        assert "440563...5096" in text
    assert repr(card) == "Card(mask='440563...5096')"


@pytest.mark.parametrize(
    ("pan", "exp", "cvc", "field"),
    [
        ("4405639704015096", "01/25", "81x5", "cvc"),
        ("4405639704015096", "01/25", "98765", "cvc"),
        ("44056397040150961234", "01/25", "8154", "pan"),
        ("4405-6397-0401-5096", "01/25", "8154", "pan"),
        ("4405639704015096", "1/25", "8154", "exp"),
        ("4405639704015096", "13/25", "8154", "exp"),
        ("4405639704015096", "00/25", "8154", "exp"),
    ],
)
def test_a_refused_card_does_not_quote_its_number_or_cvc(
    pan: str, exp: str, cvc: str, field: str
) -> None:
    with pytest.raises(CardDataError) as raised:
        Card.parse(pan, exp, cvc)
    assert raised.value.field == field
    error = raised.value
    texts = (str(error), repr(error), str(error.args), *traceback.format_exception_only(error))
    for text in texts:
        for secret in (pan, pan.replace(" ", ""), "4405639704015096", cvc):
            assert secret not in text, (secret, text)


def test_payment_request_body_uses_epays_names() -> None:
    full = PaymentRequest(
        invoice_id="000001",
        amount="1500.50",
        currency="KZT",
        description="order 1",
        name="JON JONSON",
        account_id="customer-1",
        email="jj@example.com",
        phone="77777777777",
        invoice_id_alt="100001",
        post_link="https://shop.example/ok",
        failure_post_link="https://shop.example/fail",
        back_link="https://shop.example/back",
        failure_back_link="https://shop.example/back-fail",
        secret_hash="s3cr3t-hash-value",
        card_save=True,
        data='{"k":1}',
        language="kaz",
    )
    body = full.body()
    assert body == {
        "invoiceId": "000001",
        "amount": Decimal("1500.50"),
        "currency": "KZT",
        "description": "order 1",
        "name": "JON JONSON",
        "accountId": "customer-1",
        "email": "jj@example.com",
        "phone": "77777777777",
        "invoiceIdAlt": "100001",
        "postLink": "https://shop.example/ok",
        "failurePostLink": "https://shop.example/fail",
        "backLink": "https://shop.example/back",
        "failureBackLink": "https://shop.example/back-fail",
        "cardSave": True,
        "data": '{"k":1}',
        "language": "kaz",
    }
    assert "s3cr3t-hash-value" not in repr(body)
    # Empty optional fields are left out; the ones ePay always wants stay.
    assert PaymentRequest(invoice_id="000002", amount=100, description="d").body() == {
        "invoiceId": "000002",
        "amount": Decimal("100"),
        "currency": "KZT",
        "description": "d",
        "name": "",
        "cardSave": False,
        "language": "rus",
    }
    # ePay's names are accepted on input too.
    assert PaymentRequest.model_validate(body).body() == body


@pytest.mark.parametrize(
    "fields",
    [
        {"invoice_id": ""},
        {"invoice_id": "12345"},  # ePay: 6 to 15 digits
        {"invoice_id": "1234567890123456"},  # 16 characters
        {"invoice_id": "12345a"},
        {"amount": 1.5},  # a float: never
        {"invoice_id_alt": "alt-1"},
        {"amount": "1.001"},
        {"amount": -1},
        {"description": ""},  # ePay requires a description
        {"unknown": "x"},
    ],
)
def test_payment_request_refuses_what_epay_would(fields: dict[str, Any]) -> None:
    valid = {"invoice_id": "123456", "amount": 1, "description": "d"}
    assert PaymentRequest(**valid).invoice_id == "123456"
    with pytest.raises(ValidationError) as raised:
        PaymentRequest(**(valid | fields))
    [error] = raised.value.errors()
    name = next(iter(fields))
    if name in PaymentRequest.model_fields:
        assert error["loc"][0] in (name, PaymentRequest.model_fields[name].alias)
    else:
        assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize("expires_in", ["7200", 7200, " 7200 "])
def test_token_reads_expires_in_as_text_or_number(expires_in: Any) -> None:
    token = Token.model_validate(
        {"access_token": "abc", "expires_in": expires_in, "scope": "payment", "extra": 1}
    )
    assert token.expires_in == 7200 and isinstance(token.expires_in, int)
    assert token.token_type == "Bearer" and token.refresh_token == ""
    assert token.model_extra == {"extra": 1}
    assert token.as_auth() == {
        "access_token": "abc",
        "expires_in": "7200",
        "refresh_token": "",
        "scope": "payment",
        "token_type": "Bearer",
    }


@pytest.mark.parametrize(("raw", "expected"), [("484", 484), (484, 484), ("", 0), (None, 0)])
def test_reason_code_as_text_number_or_empty(raw: Any, expected: int) -> None:
    postlink = PostLink.model_validate({"code": "error", "reasonCode": raw, "amount": "10.5"})
    assert postlink.reason_code == expected and not postlink.approved
    assert postlink.amount == Decimal("10.5")
    transaction = Transaction.model_validate({"reasonCode": raw, "statusName": "FAILED"})
    assert transaction.reason_code == expected and transaction.status == "FAILED"
    assert parse_postlink({"code": "error", "reasonCode": raw}).reason_code == expected


@pytest.mark.parametrize("name", ["invoiceID", "invoiceId"])
def test_both_spellings_of_the_invoice(name: str) -> None:
    data = {name: "000777", "accountID" if name == "invoiceID" else "accountId": "acc"}
    for cls in (Payment, Transaction, ConfirmResult, PostLink):
        assert cls.model_validate(data).invoice_id == "000777", cls
    assert Payment.model_validate(data).account_id == "acc"
    assert Transaction.model_validate(data).account_id == "acc"
    assert PostLink.model_validate(data).account_id == "acc"


def test_unknown_fields_are_kept_and_numbers_stay_decimal() -> None:
    payment = Payment.model_validate_json(
        '{"id":"t1","amount":100.10,"invoiceID":"1","newField":{"x":1},"secure3D":null}'
    )
    assert payment.amount == Decimal("100.10") and isinstance(payment.amount, Decimal)
    assert payment.model_extra == {"newField": {"x": 1}}
    transaction = Transaction.model_validate(
        {"statusID": "AUTH", "ipCountry": "KZ", "amount": "5", "secure": ""}
    )
    assert transaction.status == "AUTH" and transaction.secure is False
    assert transaction.model_extra == {"ipCountry": "KZ"}
    card = SavedCard.model_validate(
        {"ID": "c1", "CardMask": "440563...5096", "PaymentAvailable": True, "Foo": 2}
    )
    assert (card.id, card.card_mask, card.payment_available) == ("c1", "440563...5096", True)
    assert card.model_extra == {"Foo": 2}
    result = OperationResult.model_validate({})  # the live service may answer with nothing
    assert (result.code, result.amount, result.status) == (0, Decimal(0), "")
    secure3d = Secure3D.model_validate({"PaReq": "p", "MD": "m", "action": "https://acs"})
    assert (secure3d.pa_req, secure3d.md) == ("p", "m")
    postlink = parse_postlink(b'{"code":"ok","reasonCode":"0","amount":150.25,"custom":"y"}')
    assert postlink.approved and postlink.amount == Decimal("150.25")
    assert postlink.model_extra == {"custom": "y"}
    for bad in (b"not json", b"[1]"):
        with pytest.raises(ProtocolError):
            parse_postlink(bad)


def test_the_3ds_form_escapes_every_value() -> None:
    secure3d = Secure3D(
        pa_req='eJ"><script>alert(1)</script>',
        md="m&d'1",
        action='https://acs.example/pa?a=1&b="2"',
    )
    term_url = "https://shop.example/3ds?order=\"1\"&next=<b>'x'</b>"
    page = secure3d_form(secure3d, term_url)
    action, fields = form_post(page)
    assert action == secure3d.action
    assert fields == {"PaReq": secure3d.pa_req, "MD": secure3d.md, "TermUrl": term_url}
    for raw in (secure3d.pa_req, secure3d.md, secure3d.action, term_url, "alert(1)</script>"):
        assert raw not in page, raw
    assert page.count("<script") == 1  # only the form's own submit script
    assert "<b>" not in page
    with_nonce = secure3d_form(secure3d, term_url, nonce='n"1')
    assert '<script nonce="n&quot;1">document.forms[0].submit();</script>' in with_nonce
    for scheme in ("javascript:alert(1)", "data:text/html,x", "ftp://acs"):
        with pytest.raises(ValueError, match="http"):
            secure3d_form(Secure3D(pa_req="p", md="m", action=scheme), term_url)
    assert html.escape(term_url) in page and html.escape(secure3d.pa_req) in page
    assert '<html lang="ru">' in page and "Продолжить" in page
    english = secure3d_form(secure3d, term_url, language="eng")
    assert '<html lang="en">' in english and "Continue" in english
    assert '<html lang="kk">' in secure3d_form(secure3d, term_url, language="kz")


def test_a_refused_connection_is_a_connection_error() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with (
        EpayClient(nobody, retries=0, **client_options()) as client,
        pytest.raises(EpayConnectionError) as raised,
    ):
        client.service_token()
    error = raised.value
    assert error.status_code is None and error.code is None
    assert "ConnectError" in error.message
    assert error.message_ru == EpayConnectionError.default_ru
    assert CYRILLIC.search(error.message_ru)


def test_a_wrong_public_key_in_the_constructor_is_refused(gateway: Gateway) -> None:
    pem = pem_of(gateway.public_key)
    with pytest.raises(PublicKeyMismatch):
        EpayClient(
            gateway.base_url, public_key=pem, public_key_pin="sha256/AAAA", **client_options()
        )
    with pytest.raises(ProtocolError):
        EpayClient(gateway.base_url, public_key="not a key", **client_options())


# --- tokens and the public key ----------------------------------------------------


def test_a_token_bound_to_an_order(epay: EpayClient) -> None:
    token = epay.token(order())
    assert isinstance(token, Token)
    assert token.expires_in == 7200 and isinstance(token.expires_in, int)  # sent as "7200"
    assert token.scope == "payment" and token.token_type == "Bearer"
    assert len(token.access_token) > 40
    wider = epay.token(order(), scope="webapi payment")
    assert wider.scope == "webapi payment"
    assert wider.access_token != token.access_token


def test_the_service_token_is_cached(epay: EpayClient) -> None:
    first = epay.service_token()
    assert first.scope == SERVICE_SCOPE and first.expires_in == 7200
    second = epay.service_token()
    assert second is first
    assert epay.token(scope=SERVICE_SCOPE).access_token != first.access_token  # not cached


def test_a_refused_cached_service_token_is_renewed_once(epay: EpayClient) -> None:
    placed = order()
    epay.pay(placed, VISA)
    good = epay.service_token()
    stale = Token(access_token="not-a-token-the-gateway-issued", expires_in=7200)
    epay._core._service = (stale, float("inf"))  # as if the gateway's keys had changed
    assert epay.status(placed.invoice_id).invoice_id == placed.invoice_id
    renewed = epay.service_token()
    assert renewed.access_token not in (stale.access_token, good.access_token)


def test_a_wrong_secret_is_an_authentication_error(gateway: Gateway) -> None:
    options = client_options() | {"client_secret": "wrong-secret"}
    with EpayClient(gateway.base_url, **options) as client:
        for call in (
            client.service_token,
            lambda: client.token(order()),
            lambda: client.status("1"),
        ):
            with pytest.raises(AuthenticationError) as raised:
                call()
            error = raised.value
            assert error.status_code == 401
            assert error.message == "invalid client credentials"
            assert error.message_ru and CYRILLIC.search(error.message_ru)
            assert error.body["error"] == "invalid_client"
        assert "wrong-secret" not in repr(client)


def test_the_public_key_and_its_pin(gateway: Gateway, epay: EpayClient) -> None:
    key = epay.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.public_numbers() == gateway.public_key.public_numbers()
    assert epay.public_key() is key  # fetched once
    pin = key_fingerprint(key)
    assert pin.startswith("sha256/") and len(pin) == len("sha256/") + 44

    with EpayClient(gateway.base_url, public_key_pin=pin, **client_options()) as pinned:
        assert pinned.public_key().public_numbers() == key.public_numbers()
        placed = order()
        assert_approved(pinned.pay(placed, VISA), placed)

    wrong = "sha256/" + "A" * 43 + "="
    mismatch = key_refused(gateway.base_url, PublicKeyMismatch, public_key_pin=wrong)
    assert pin in mismatch.message and wrong in mismatch.message
    assert mismatch.message_ru == PublicKeyMismatch.default_ru
    with EpayClient(gateway.base_url, public_key_pin=wrong, **client_options()) as other:
        for call in (lambda: other.cryptogram(VISA), lambda: other.pay(order(), VISA)):
            with pytest.raises(PublicKeyMismatch):
                call()  # no card data leaves under a key that is not the pinned one
    assert load_public_key(pem_of(key), pin=pin).public_numbers() == key.public_numbers()


def test_a_client_given_the_key_never_fetches_it(gateway: Gateway) -> None:
    paths: list[str] = []

    def record(request: httpx.Request) -> None:
        paths.append(request.url.path)

    http = httpx.Client(timeout=30, event_hooks={"request": [record]})
    pem = pem_of(gateway.public_key).decode("ascii")
    pin = key_fingerprint(gateway.public_key)
    with (
        http,
        EpayClient(
            gateway.base_url,
            http_client=http,
            public_key=pem,
            public_key_pin=pin,
            **client_options(),
        ) as client,
    ):
        placed = order()
        assert_approved(client.pay(placed, VISA), placed)
        assert not http.is_closed  # a client passed in is the caller's to close
    assert paths == ["/oauth2/token", "/payment/cryptopay"]


# --- paying -----------------------------------------------------------------------


def test_cryptogram_and_cryptopay(epay: EpayClient) -> None:
    placed = order(amount="1234.56", email="jj@example.com", phone="77777777777")
    token = epay.token(placed)
    cryptogram = epay.cryptogram(VISA)
    assert VISA.pan not in cryptogram and len(cryptogram) == 344  # base64 of 2048 bits
    payment = epay.cryptopay(placed, cryptogram, token)
    assert_approved(payment, placed)
    assert payment.amount == Decimal("1234.56")
    assert (payment.email, payment.phone, payment.description) == (
        "jj@example.com",
        "77777777777",
        DESCRIPTION,
    )
    assert payment.currency == "KZT" and payment.card_type == "VISA"


def test_pay_approves(epay: EpayClient) -> None:
    placed = order(amount=250)
    payment = epay.pay(placed, VISA)
    assert_approved(payment, placed)
    assert payment.amount == Decimal(250)
    mastercard = order()
    assert_approved(
        epay.pay(mastercard, Card.parse("5522 0427 0506 6736", "01/27", "775")),
        mastercard,
        mask="552204...6736",
    )


@pytest.mark.parametrize("cls", DECLINE_CLASSES, ids=lambda cls: cls.__name__)
def test_each_decline_raises_its_class(epay: EpayClient, cls: type[PaymentDeclined]) -> None:
    for code in sorted(cls.codes):
        placed = order()
        with pytest.raises(PaymentDeclined) as raised:
            epay.pay(placed, card_for(code))
        assert_declined(raised.value, cls, code, placed)
        assert epay.status(placed.invoice_id).reason_code == code


@pytest.mark.parametrize("code", [461, 475])
def test_a_code_of_no_class_is_a_processing_error(epay: EpayClient, code: int) -> None:
    placed = order()
    with pytest.raises(ProcessingError) as raised:
        epay.pay(placed, card_for(code))
    assert_declined(raised.value, ProcessingError, code, placed)


def test_every_unclassed_code_is_a_processing_error(epay: EpayClient) -> None:
    for code in UNCLASSED:
        placed = order()
        with pytest.raises(ProcessingError) as raised:
            epay.pay(placed, card_for(code))
        assert_declined(raised.value, ProcessingError, code, placed)


@pytest.mark.parametrize("code", sorted(NOT_DECLINES))
def test_declines_with_a_format_or_not_found_code(epay: EpayClient, code: int) -> None:
    """The payment is declined, but 477 reads as a bad request and 522/1373 as "not
    found", so these are not PaymentDeclined (error_for's precedence)."""
    placed = order()
    with pytest.raises(EpayError) as raised:
        epay.pay(placed, card_for(code))
    assert_declined(raised.value, NOT_DECLINES[code], code, placed)
    assert not isinstance(raised.value, PaymentDeclined)


def test_a_missing_name_is_an_invalid_request(epay: EpayClient) -> None:
    placed = order(name="")
    with pytest.raises(InvalidRequest) as raised:
        epay.pay(placed, VISA)
    error = raised.value
    assert isinstance(error, ApiError)
    assert (error.status_code, error.code, error.message) == (400, 477, "name: is required")
    assert error.message_ru == RUSSIAN[477]
    assert error.transaction_id == "" and error.invoice_id == placed.invoice_id


def test_paying_an_invoice_twice_is_an_api_error(epay: EpayClient) -> None:
    placed = order()
    epay.pay(placed, VISA)
    with pytest.raises(ApiError) as raised:
        epay.pay(placed, VISA)
    error = raised.value
    assert type(error) is ApiError
    assert (error.status_code, error.code) == (400, 100)
    assert error.message.startswith(f"invoice {placed.invoice_id} is already used")
    assert error.message_ru == ApiError.default_ru


# --- protocol and server errors from a real server --------------------------------


def test_an_answer_that_is_not_a_key_is_a_protocol_error(gateway: Gateway) -> None:
    # An API address whose /public.rsa is a 200 HTML page (the payform's success page).
    base = gateway.base_url
    environment = Environment("html", base, f"{base}/payform/success.html?x=", f"{base}/payform/")
    error = key_refused(environment, ProtocolError)
    assert error.message.startswith("public key is not PEM")
    assert error.status_code is None
    assert error.message_ru == ProtocolError.default_ru


def test_a_5xx_answer_is_a_server_error(gateway: Gateway) -> None:
    # The hosted page answers 501 to a transfer it does not implement.
    base = gateway.base_url
    api = f"{base}/payform/?isTransfer=true&params=x&x="
    error = key_refused(Environment("5xx", base, api, f"{base}/payform/"), ServerError)
    assert error.status_code == 501
    assert error.message_ru == ServerError.default_ru


def test_an_unknown_path_is_not_found(gateway: Gateway) -> None:
    base = gateway.base_url
    environment = Environment("gone", base, f"{base}/no-such-api", f"{base}/payform/")
    error = key_refused(environment, NotFound)
    assert (error.status_code, error.code) == (404, 100)


# --- 3-D Secure -------------------------------------------------------------------


def test_3ds_pay_acs_confirm(epay: EpayClient, http: httpx.Client) -> None:
    placed = order()
    payment = epay.pay(placed, Card.parse(*s3d.VISA_3DS))
    assert payment.needs_3ds and payment.secure3d is not None
    assert payment.status == "" and payment.id
    secure3d = payment.secure3d
    assert secure3d.action == f"{epay.environment.api_url}/acs/pa"
    assert secure3d.pa_req.startswith("eJ") and secure3d.md
    page = secure3d_form(secure3d, TERM_URL)
    assert f'action="{html.escape(secure3d.action)}"' in page
    for value in (secure3d.pa_req, secure3d.md, TERM_URL):
        assert f'value="{html.escape(value)}"' in page
    assert epay.status(placed.invoice_id).status == "NEW"  # waiting for the cardholder

    pa_res, md = pass_acs(http, secure3d)
    result = epay.confirm(payment.id, pa_res, md)
    assert isinstance(result, ConfirmResult)
    assert (result.code, result.status, result.id, result.invoice_id) == (
        0,
        "AUTH",
        payment.id,
        placed.invoice_id,
    )
    assert result.secure is True and re.fullmatch(r"[0-9]{12}", result.reference)
    assert result.redirect_url.startswith(f"{epay.environment.api_url}/payform/success.html?")
    assert f"invoiceID={placed.invoice_id}" in result.redirect_url
    assert epay.status(placed.invoice_id).status == "AUTH"

    with pytest.raises(ProcessingError) as raised:
        epay.confirm(payment.id, pa_res, md)
    assert (raised.value.code, raised.value.status_code) == (469, 400)
    assert raised.value.transaction_id == payment.id
    assert raised.value.message_ru == RUSSIAN[469]


def test_3ds_then_insufficient_funds(epay: EpayClient, http: httpx.Client) -> None:
    placed = order()
    payment = epay.pay(placed, Card.parse(*s3d.VISA_3DS_THEN_484))
    assert payment.secure3d is not None
    pa_res, md = pass_acs(http, payment.secure3d)
    with pytest.raises(InsufficientFunds) as raised:
        epay.confirm(payment.id, pa_res, md)
    error = raised.value
    assert (error.code, error.message, error.message_ru) == (484, REASONS[484], RUSSIAN[484])
    assert error.status_code == 200  # confirm answers a refused payment with HTTP 200
    assert error.transaction_id == payment.id and error.invoice_id == placed.invoice_id
    assert error.body["status"] == "FAILED"
    assert epay.status(placed.invoice_id).reason_code == 484


def test_3ds_failed_by_the_cardholder(epay: EpayClient, http: httpx.Client) -> None:
    placed = order()
    payment = epay.pay(placed, Card.parse(*s3d.MASTERCARD_3DS))
    assert payment.secure3d is not None
    pa_res, md = pass_acs(http, payment.secure3d, fail=True)
    with pytest.raises(Secure3DFailed) as raised:
        epay.confirm(payment.id, pa_res, md)
    error = raised.value
    assert (error.code, error.message, error.message_ru) == (473, REASONS[473], RUSSIAN[473])
    assert error.transaction_id == payment.id
    transaction = epay.status(placed.invoice_id)
    assert (transaction.status, transaction.reason_code) == ("3D", 473)


def test_3ds_confirm_with_the_payments_own_token(epay: EpayClient, http: httpx.Client) -> None:
    placed = order()
    token = epay.token(placed)
    payment = epay.cryptopay(placed, epay.cryptogram(Card.parse(*s3d.VISA_3DS)), token)
    assert payment.secure3d is not None
    pa_res, md = pass_acs(http, payment.secure3d)
    result = epay.confirm(payment.id, pa_res, md, token=token)
    assert (result.code, result.status, result.id) == (0, "AUTH", payment.id)
    # The token of another order does not reach this transaction.
    other = epay.pay(order(), Card.parse(*s3d.VISA_3DS))
    assert other.secure3d is not None
    pa_res, md = pass_acs(http, other.secure3d)
    with pytest.raises(NotFound) as raised:
        epay.confirm(other.id, pa_res, md, token=epay.token(order()))
    assert (raised.value.status_code, raised.value.code) == (400, 522)
    assert raised.value.message_ru == RUSSIAN[522]
    assert epay.confirm(other.id, pa_res, md).status == "AUTH"


# --- saved cards ------------------------------------------------------------------


def test_save_list_pay_with_and_deactivate_a_card(epay: EpayClient) -> None:
    customer = account()
    assert epay.cards(customer) == []
    first = order(card_save=True, account_id=customer)
    saved = epay.pay(first, VISA)
    assert_approved(saved, first)
    assert re.fullmatch(r"[0-9a-f-]{36}", saved.card_id) and saved.account_id == customer

    [card] = epay.cards(customer)
    assert isinstance(card, SavedCard)
    assert (card.id, card.card_mask, card.payment_available) == (
        saved.card_id,
        "440563...5096",
        True,
    )
    assert (card.account_id, card.transaction_id, card.terminal) == (customer, saved.id, TERMINAL)
    assert card.payer_name == "JON JONSON" and card.reference == saved.reference

    repeat = order(account_id=customer, amount=75)
    again = epay.pay_with_card(repeat, saved.card_id)
    assert_approved(again, repeat)
    assert (again.card_id, again.amount) == (saved.card_id, Decimal(75))

    with pytest.raises(NotFound) as raised:  # another customer's account cannot use it
        epay.pay_with_card(order(account_id=account()), saved.card_id)
    assert (raised.value.code, raised.value.status_code) == (1373, 400)
    with pytest.raises(InvalidRequest):  # saved-card payments need the accountId
        epay.pay_with_card(order(), saved.card_id)

    epay.deactivate_card(saved.card_id)
    assert epay.cards(customer) == []
    with pytest.raises(NotFound) as raised:
        epay.deactivate_card(saved.card_id)
    assert (raised.value.code, raised.value.status_code) == (1373, 400)
    assert raised.value.message_ru == RUSSIAN[1373]
    with pytest.raises(NotFound):
        epay.pay_with_card(order(account_id=customer), saved.card_id)


def test_unknown_cards_and_empty_ids(epay: EpayClient) -> None:
    assert epay.cards(account()) == []
    with pytest.raises(NotFound) as raised:
        epay.deactivate_card("00000000-0000-0000-0000-000000000000")
    assert raised.value.code == 1373
    for call in (epay.cards, epay.deactivate_card, epay.status, epay.cancel):
        with pytest.raises(ValueError, match="must not be empty"):
            call("")


# --- the hosted payment page ------------------------------------------------------


def test_payform_url_opens_the_hosted_page(epay: EpayClient, http: httpx.Client) -> None:
    description = '<b>"Tea" & cake</b>'
    placed = order(amount="123.45", description=description, email="jj@example.com")
    url = epay.payform_url(placed)
    assert url.startswith(f"{epay.environment.api_url}/payform/?params=")
    assert not url.endswith("isShortForm=true")
    params = payform_params(url)
    assert (params["invoiceId"], params["amount"], params["terminal"]) == (
        placed.invoice_id,
        "123.45",
        TERMINAL,
    )
    assert (params["description"], params["email"], params["cardSave"]) == (
        description,
        "jj@example.com",
        "false",
    )
    auth = dict(parse_qsl(params["auth"]))
    assert auth["expires_in"] == "7200" and auth["scope"] == "payment"

    page = http.get(url)
    assert page.status_code == 200, page.text
    assert html.escape("<b>") in page.text and description not in page.text
    assert "&lt;b&gt;" in page.text and "cake&lt;/b&gt;" in page.text
    assert re.search(r'<span id="amount">123[.,]45</span>', page.text), page.text
    assert placed.invoice_id in page.text

    widget = epay.payform_url(order(), widget=True, extra={"homebank_token": "x y"})
    assert widget.endswith("&isShortForm=true")
    assert payform_params(widget.removesuffix("&isShortForm=true"))["homebank_token"] == "x y"
    assert http.get(widget).status_code == 200


# --- status and operations --------------------------------------------------------


def test_status_charge_and_refund(epay: EpayClient, gateway: Gateway) -> None:
    placed = order(amount=1000, account_id=account(), email="jj@example.com")
    payment = epay.pay(placed, VISA)
    transaction = epay.status(placed.invoice_id)
    assert isinstance(transaction, Transaction)
    assert (transaction.id, transaction.invoice_id, transaction.status) == (
        payment.id,
        placed.invoice_id,
        "AUTH",
    )
    assert transaction.amount == Decimal(1000) and isinstance(transaction.amount, Decimal)
    assert transaction.reason_code == 0 and isinstance(transaction.reason_code, int)
    assert (transaction.reference, transaction.card_mask) == (payment.reference, payment.card_mask)
    assert (transaction.account_id, transaction.email) == (placed.account_id, "jj@example.com")
    assert transaction.terminal == TERMINAL and transaction.secure is False
    assert "ipCountry" in (transaction.model_extra or {})

    charged = epay.charge(payment.id, 600)
    assert isinstance(charged, OperationResult)
    assert (charged.code, charged.id, charged.status) == (0, payment.id, "CHARGE")
    assert (charged.amount, charged.amount_charged) == (Decimal(600), Decimal(600))
    assert charged.amount_refunded == 0 and charged.operation_id
    assert epay.status(placed.invoice_id).status == "CHARGE"

    refunded = epay.refund(payment.id, "150.50", external_id="refund-1")
    assert (refunded.status, refunded.amount, refunded.amount_refunded) == (
        "CHARGE",
        Decimal("150.50"),
        Decimal("150.50"),
    )
    rows = query(
        gateway.database_url,
        "SELECT external_id FROM operations WHERE transaction_id = :t AND kind = 'refund'",
        t=payment.id,
    )
    assert [r.external_id for r in rows] == ["refund-1"]

    with pytest.raises(ApiError) as raised:
        epay.refund(payment.id, 1000)
    assert (raised.value.code, raised.value.message) == (
        100,
        "the refunds would exceed the amount charged",
    )
    with pytest.raises(ApiError):
        epay.cancel(payment.id)  # a charged payment is refunded, not cancelled

    rest = epay.refund(payment.id)  # no amount: what is left
    assert (rest.status, rest.amount, rest.amount_refunded) == (
        "REFUND",
        Decimal("449.50"),
        Decimal(600),
    )
    assert epay.status(placed.invoice_id).status == "REFUND"


def test_charge_in_full_and_cancel(epay: EpayClient) -> None:
    whole = order(amount=300)
    paid = epay.pay(whole, VISA)
    charged = epay.charge(paid.id)
    assert (charged.status, charged.amount_charged) == ("CHARGE", Decimal(300))

    cancelled_order = order()
    fresh = epay.pay(cancelled_order, VISA)
    cancelled = epay.cancel(fresh.id)
    assert (cancelled.code, cancelled.status, cancelled.id) == (0, "CANCEL", fresh.id)
    assert epay.status(cancelled_order.invoice_id).status == "CANCEL"
    with pytest.raises(ApiError) as raised:
        epay.charge(fresh.id)
    assert "needs status AUTH" in raised.value.message


def test_status_and_operations_of_what_does_not_exist(epay: EpayClient) -> None:
    with pytest.raises(NotFound) as raised:
        epay.status(new_invoice())
    error = raised.value
    assert (error.code, error.status_code, error.message) == (102, 400, "Invoice not found")
    assert error.body == {"resultCode": "102", "resultMessage": "Invoice not found"}
    # The gateway answers an unknown transaction id with code 100, not 522 or 404.
    missing = "00000000-0000-0000-0000-000000000000"
    for operation in (epay.charge, epay.cancel, epay.refund):
        with pytest.raises(ApiError) as raised_op:
            operation(missing)
        assert type(raised_op.value) is ApiError
        assert (raised_op.value.code, raised_op.value.message) == (100, "transaction not found")


# --- postLinks the gateway writes -------------------------------------------------


def test_postlinks_parse_and_verify(epay: EpayClient, gateway: Gateway) -> None:
    placed = order(
        post_link=POST_LINK, failure_post_link=FAILURE_POST_LINK, secret_hash="hash-of-order-1"
    )
    payment = epay.pay(placed, VISA)
    [(note_id, url, body)] = notification_bodies(gateway, payment.id)
    assert url == POST_LINK
    postlink = parse_postlink(body.encode())
    assert postlink.approved and postlink.code == "ok"
    assert (postlink.id, postlink.invoice_id, postlink.amount) == (
        payment.id,
        placed.invoice_id,
        Decimal(100),
    )
    assert postlink.reference == payment.reference and postlink.card_mask == "440563...5096"
    assert check_secret_hash(postlink, "hash-of-order-1")
    assert not check_secret_hash(postlink, "hash-of-another-order")
    assert not check_secret_hash(postlink, "")

    secret = signing.new_secret()
    headers = signing.headers(secret, note_id, body)
    verify_postlink_signature(body, headers, secret)  # raises if it does not check out
    verify_postlink_signature(body.encode(), {k.title(): v for k, v in headers.items()}, secret)
    stale = signing.headers(secret, note_id, body, now=datetime.now(UTC) - timedelta(hours=1))
    for bad_body, bad_headers, bad_secret in (
        (body.replace('"ok"', '"no"'), headers, secret),
        (body, headers, signing.new_secret()),
        (body, stale, secret),
        (body, {}, secret),
        (body, headers, "not-a-secret"),
    ):
        with pytest.raises(InvalidSignature) as raised:
            verify_postlink_signature(bad_body, bad_headers, bad_secret)
        assert raised.value.message.startswith("postLink signature")
        assert raised.value.message_ru == InvalidSignature.default_ru

    declined = order(post_link=POST_LINK, failure_post_link=FAILURE_POST_LINK)
    with pytest.raises(InsufficientFunds) as failed:
        epay.pay(declined, card_for(484))
    [(_, url, body)] = notification_bodies(gateway, failed.value.transaction_id)
    assert url == FAILURE_POST_LINK
    refused = parse_postlink(body)
    assert not refused.approved and refused.reason_code == 484
    assert refused.invoice_id == declined.invoice_id


def test_answers_dump_back_under_epays_names() -> None:
    body = {
        "id": "t1",
        "invoiceID": "000001",
        "accountID": "a1",
        "cardID": "c1",
        "cardMask": "440563...5096",
        "secure3D": {"paReq": "p", "md": "m", "action": "https://acs"},
    }
    dumped = Payment.model_validate(body).model_dump(by_alias=True, mode="json")
    assert {k: dumped[k] for k in body} == body
    assert "invoice_id" not in dumped and "pa_req" not in dumped["secure3D"]
    card = SavedCard.model_validate({"ID": "c1", "CardMask": "m", "PaymentAvailable": True})
    assert card.model_dump(by_alias=True)["PaymentAvailable"] is True
    assert card.model_dump(by_alias=True)["ID"] == "c1"
