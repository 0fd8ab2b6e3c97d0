"""Property tests (hypothesis) of the three decoders and builders that take outside input
or feed a shop's parser: the card cryptogram, the hosted page's ``params``, and the
postLink body.

Each decoder, given anything, returns a valid result or raises its own error, never
another exception; valid input round-trips. The generation is derandomized (the same
examples every run) and the example counts are the figures RELIABILITY.md quotes:

    PYTHONPATH=src .venv/bin/pytest tests/test_fuzz_decoders.py

``tests/test_lzstring.py`` already round-trips the LZString codec itself and feeds it
noise; ``tests/test_bad_input.py`` sends bad cryptograms over HTTP. These go one level
up (the params pairs and the payment object) and one level down (what an RSA
decryption may yield).
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tolem import fields, wire
from tolem.client._helpers import encode_params
from tolem.notifications.body import postlink_body
from tolem.payform import params
from tolem.payform.lzstring import compress_to_encoded_uri_component as compress
from tolem.payments.cryptogram import CryptogramError, decrypt
from tolem.payments.models import Status, Transaction
from tolem.processor.base import Card

#: Examples per property; RELIABILITY.md lists them.
EXAMPLES = 500


def _settings(examples: int = EXAMPLES) -> Any:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Outcomes:
    """How many examples were accepted and refused: both must happen, or the property
    only ever tested one branch."""

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0

    def check(
        self, *, accepted: bool = True, refused: bool = True, examples: int = EXAMPLES
    ) -> None:
        assert self.accepted + self.refused == examples  # the figure RELIABILITY.md quotes
        if accepted:
            assert self.accepted > 0, "no example was accepted"
        if refused:
            assert self.refused > 0, "no example was refused"


# --- the card cryptogram --------------------------------------------------------------

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_BYTES = KEY.key_size // 8
#: The longest plaintext PKCS#1 v1.5 takes with this key.
MAX_PLAIN = KEY_BYTES - 11


def _assert_valid_card(card: Card, terminal: str) -> None:
    assert re.fullmatch(r"[0-9]{12,19}", card.pan)
    assert 0 <= card.exp_month <= 99 and 2000 <= card.exp_year <= 2099
    assert re.fullmatch(r"[0-9]{1,4}", card.cvc)
    assert terminal == terminal.strip() and len(terminal) <= 64
    assert wire.text_problem(terminal) is None


def _decrypt(text: str, outcomes: Outcomes) -> None:
    try:
        card, terminal = decrypt(KEY, text)
    except CryptogramError:
        outcomes.refused += 1
    else:
        _assert_valid_card(card, terminal)
        outcomes.accepted += 1


def _encrypt(plain: bytes) -> str:
    return base64.b64encode(KEY.public_key().encrypt(plain, padding.PKCS1v15())).decode()


def test_any_text_is_refused_with_a_cryptogram_error() -> None:
    outcomes = Outcomes()
    base64ish = st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n"
    )

    @_settings()
    @given(st.one_of(st.text(), base64ish, st.binary().map(lambda b: base64.b64encode(b).decode())))
    def check(text: str) -> None:
        _decrypt(text, outcomes)

    check()
    outcomes.check(accepted=False)


def test_any_ciphertext_of_the_key_length_is_refused_with_a_cryptogram_error() -> None:
    """Noise of the right length: PKCS#1 v1.5 refuses it, or (implicit rejection)
    yields noise that is not card JSON; the same error either way."""
    outcomes = Outcomes()

    @_settings()
    @given(st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES))
    def check(raw: bytes) -> None:
        _decrypt(base64.b64encode(raw).decode(), outcomes)

    check()
    outcomes.check(accepted=False)


_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=24),
    st.from_regex(r"\s?[0-9]{10,20}\s?", fullmatch=True),
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_CARD_KEYS = ("hpan", "expDate", "cvc", "terminalId")


@st.composite
def _card_like(draw: st.DrawFn) -> bytes:
    """A JSON object with the cryptogram's keys (some missing) holding anything."""
    plausible = {
        "hpan": st.from_regex(r"[0-9 ]{10,21}", fullmatch=True),
        "expDate": st.one_of(st.from_regex(r"[0-9]{3,5}", fullmatch=True), st.integers(-10, 99999)),
        "cvc": st.one_of(st.from_regex(r"[0-9]{0,5}", fullmatch=True), st.integers(-1, 99999)),
        "terminalId": st.one_of(st.uuids().map(str), st.text(max_size=70)),
    }
    data: dict[str, Any] = {}
    for key in _CARD_KEYS:
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        data[key] = draw(st.one_of(plausible[key], _JSON))
    if draw(st.booleans()):
        data |= draw(st.dictionaries(st.text(max_size=8), _JSON, max_size=2))
    return json.dumps(data, separators=(",", ":")).encode()


@st.composite
def _valid_card(draw: st.DrawFn) -> bytes:
    """Card JSON the decoder must accept."""
    data = {
        "hpan": draw(st.from_regex(r"[0-9]{12,19}", fullmatch=True)),
        "expDate": draw(st.from_regex(r"(0[1-9]|1[0-2])[0-9]{2}", fullmatch=True)),
        "cvc": draw(st.from_regex(r"[0-9]{3,4}", fullmatch=True)),
        "terminalId": str(draw(st.uuids())),
    }
    return json.dumps(data, separators=(",", ":")).encode()


def test_any_plaintext_encrypted_with_the_key_gives_a_card_or_a_cryptogram_error() -> None:
    """What really decrypts (anything up to the key's limit, card-like JSON with any
    values) yields a valid card or CryptogramError: never a TypeError, a KeyError, an
    int() of another script's digits, a card with spaces or a month of 'ab'."""
    outcomes = Outcomes()

    @_settings()
    @given(
        st.one_of(
            st.binary(max_size=MAX_PLAIN),
            _JSON.map(lambda v: json.dumps(v).encode()),
            _card_like(),
            _valid_card(),  # so that acceptance never rests on chance alone
        )
    )
    def check(plain: bytes) -> None:
        assume(len(plain) <= MAX_PLAIN)
        _decrypt(_encrypt(plain), outcomes)

    check()
    outcomes.check()


def test_valid_card_json_round_trips() -> None:
    @_settings()
    @given(
        pan=st.from_regex(r"[0-9]{12,19}", fullmatch=True),
        exp=st.from_regex(r"(0[1-9]|1[0-2])[0-9]{2}", fullmatch=True),
        cvc=st.from_regex(r"[0-9]{3,4}", fullmatch=True),
        terminal=st.uuids().map(str),
        wrap=st.sampled_from([0, 64, 76]),
    )
    def check(pan: str, exp: str, cvc: str, terminal: str, wrap: int) -> None:
        plain = {"hpan": pan, "expDate": exp, "cvc": cvc, "terminalId": terminal}
        text = _encrypt(json.dumps(plain, separators=(",", ":")).encode())
        if wrap:  # PEM-style line breaks, as some shops' libraries write base64
            text = "\n".join(text[i : i + wrap] for i in range(0, len(text), wrap))
        card, got_terminal = decrypt(KEY, text)
        assert (card.pan, card.cvc, got_terminal) == (pan, cvc, terminal)
        assert (card.exp_month, card.exp_year) == (int(exp[:2]), 2000 + int(exp[2:]))

    check()


# --- the hosted page's params ---------------------------------------------------------

_QUERYISH = st.text(alphabet=st.sampled_from("&=%+ abcAMOUNTinvoice0123456789ABCDEFef\x00Ё😀\n"))


def _decode(text: str, outcomes: Outcomes) -> dict[str, str] | None:
    try:
        pairs = params.decode(text)
    except params.ParamsError as exc:
        assert exc.field
        outcomes.refused += 1
        return None
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items())
    assert all(k == k.strip().lower() for k in pairs)
    assert all(wire.text_problem(k + v) is None for k, v in pairs.items())
    outcomes.accepted += 1
    return pairs


def test_any_params_decode_to_pairs_or_a_params_error() -> None:
    """The raw ``params`` of a link (noise, or LZString of any query-like text with
    broken percent-escapes, NUL, invalid UTF-8 sequences) decode or raise ParamsError."""
    outcomes = Outcomes()

    @_settings()
    @given(st.one_of(st.text(), _QUERYISH.map(compress), st.text().map(compress)))
    def check(text: str) -> None:
        _decode(text, outcomes)

    check()
    outcomes.check()


_KEY = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,15}", fullmatch=True)
_VALUE = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))


def test_encode_params_round_trips_through_the_link() -> None:
    """What the SDK (and payment-api.js) writes, the page reads back: every value, any
    Unicode; keys case-insensitive, the first of two spellings wins."""

    @_settings()
    @given(st.dictionaries(_KEY, _VALUE, max_size=12), st.dictionaries(_KEY, _VALUE, max_size=3))
    def check(payment: dict[str, str], auth: dict[str, str]) -> None:
        link = compress(encode_params({**payment, "auth": auth} if auth else payment))
        pairs = params.decode(link)
        expected: dict[str, str] = {}
        for key, value in payment.items():
            expected.setdefault(key.lower(), value)
        if auth:
            expected.setdefault("auth", encode_params(auth))
        assert pairs == expected
        if auth and expected["auth"] == encode_params(auth):
            nested: dict[str, str] = {}
            for key, value in auth.items():
                nested.setdefault(key.lower(), value)
            assert params.query_pairs(pairs["auth"]) == nested

    check()


_AMOUNTS = st.one_of(
    st.decimals(min_value=0, max_value=10**13, places=2).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-5, 10**13).map(str),
    st.text(max_size=12),
)
_LINKS = st.one_of(
    st.sampled_from(["", "https://shop.example/ok", "http://127.0.0.1:1/x", "javascript:alert(1)"]),
    st.text(max_size=30),
)
_FIELDS: dict[str, st.SearchStrategy[str]] = {
    "amount": _AMOUNTS,
    "currency": st.one_of(st.sampled_from(["KZT", "usd", "", "XXX"]), st.text(max_size=4)),
    "invoiceid": st.one_of(st.from_regex(r"[0-9]{6,15}", fullmatch=True), st.text(max_size=16)),
    "invoiceidalt": st.one_of(st.just(""), st.from_regex(r"[0-9]{4,16}", fullmatch=True)),
    "description": _VALUE,
    "accountid": _VALUE,
    "email": _VALUE,
    "phone": _VALUE,
    "name": _VALUE,
    "data": _VALUE,
    "terminal": st.one_of(st.uuids().map(str), _VALUE),
    "paymenttype": st.one_of(st.sampled_from(["", "cardVerification", "CARDVERIFICATION"]), _VALUE),
    "postlink": _LINKS,
    "failurepostlink": _LINKS,
    "backlink": _LINKS,
    "failurebacklink": _LINKS,
    "cardsave": st.one_of(st.sampled_from(["", "true", "false", "1", "0"]), st.text(max_size=5)),
    "autobacklink": st.one_of(st.sampled_from(["", "true", "false"]), st.text(max_size=5)),
    "language": st.one_of(st.sampled_from(["", "rus", "KAZ", "eng", "EN"]), st.text(max_size=4)),
    "auth": st.one_of(
        st.just("access_token=abc&expires_in=7200"),
        st.just('{"access_token":"abc"}'),
        st.text(max_size=40),
    ),
}


@st.composite
def _payment_object(draw: st.DrawFn) -> dict[str, str]:
    return {name: draw(strategy) for name, strategy in _FIELDS.items() if draw(st.integers(0, 7))}


def test_any_payment_object_parses_to_a_checked_order_or_a_params_error() -> None:
    """The pairs of a link, each field plausible or anything: a PayformRequest whose
    order obeys the field rules, or ParamsError naming a field; the session (auth) is
    an access token or SessionExpired."""
    outcomes = Outcomes()
    sessions = Outcomes()

    @_settings(1000)
    @given(_payment_object())
    def check(pairs: dict[str, str]) -> None:
        try:
            token = params.access_token(pairs)
        except (params.SessionExpired, params.ParamsError):
            sessions.refused += 1
        else:
            assert token and token == token.strip()
            sessions.accepted += 1
        try:
            request = params.parse(pairs)
        except params.ParamsError as exc:
            assert exc.field
            outcomes.refused += 1
            return
        order = request.order
        assert isinstance(order.amount, Decimal) and order.amount.is_finite()
        assert Decimal(0) <= order.amount <= fields.MAX_AMOUNT
        assert order.amount == order.amount.quantize(Decimal("0.01"))
        assert re.fullmatch(r"[0-9]{6,15}", order.invoice_id)
        assert re.fullmatch(r"[A-Z]{3}", order.currency)
        assert order.language in {"rus", "kaz", "eng"}
        for text in (order.description, order.account_id, order.email, order.name, order.data):
            assert wire.text_problem(text) is None
        outcomes.accepted += 1

    check()
    outcomes.check(examples=1000)
    sessions.check(examples=1000)


# --- the postLink body ----------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
#: Every amount Money can hold (two decimals, up to the largest accepted), written with
#: as many decimal places and exponents as a Decimal may carry.
_MONEY = st.builds(
    lambda cents, places: (
        Decimal(cents).scaleb(-2).normalize()  # 1E+2, 1.5E+3, …
        if places is None
        else Decimal(cents).scaleb(-2).quantize(Decimal(10) ** -places)  # 100.5000000
    ),
    st.integers(0, int(fields.MAX_AMOUNT * 100)),
    st.one_of(st.none(), st.integers(2, 16)),  # 14 digits + 16 places: Decimal's 28 digits
)
_TEXT_FIELDS = {
    "account_id": "accountId",
    "description": "description",
    "email": "email",
    "id": "id",
    "invoice_id": "invoiceId",
    "ip": "ip",
    "issuer": "issuer",
    "payer_name": "name",
    "phone": "phone",
    "secret_hash": "secret_hash",
    "terminal_id": "terminal",
    "currency": "currency",
}
_SUCCESS_ONLY = {
    "approval_code": "approvalCode",
    "card_id": "cardId",
    "card_mask": "cardMask",
    "card_type": "cardType",
    "reference": "reference",
}
_NUMBER = re.compile(rb'"amount":(-?[0-9]+(?:\.[0-9]*[1-9])?)[,}]')


@st.composite
def _transaction(draw: st.DrawFn) -> Transaction:
    values: dict[str, Any] = {name: draw(_TEXT) for name in (*_TEXT_FIELDS, *_SUCCESS_ONLY)}
    return Transaction(
        **values,
        amount=draw(_MONEY),
        status=draw(st.sampled_from(list(Status))).value,
        reason_code=draw(st.integers(-(2**31), 2**31 - 1)),
        language=draw(st.sampled_from(["rus", "kaz", "eng"])),
        secure=draw(st.booleans()),
    )


@pytest.mark.parametrize("moment", [datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)])
def test_any_transaction_gives_a_valid_postlink_body(moment: datetime) -> None:
    """Whatever a transaction holds (any Unicode, control characters, any reason code,
    any amount Money keeps): the body is valid UTF-8 JSON with every documented field,
    its documented type and the exact amount, written as a plain decimal."""

    @_settings()
    @given(_transaction())
    def check(tx: Transaction) -> None:
        raw = wire.dumps(postlink_body(tx, moment))
        raw.decode("utf-8")  # strict
        body = json.loads(raw, parse_float=Decimal, parse_int=Decimal)
        ok = Status(tx.status).succeeded
        for attribute, name in _TEXT_FIELDS.items():
            assert body[name] == getattr(tx, attribute), name
        for attribute, name in _SUCCESS_ONLY.items():
            assert body[name] == (getattr(tx, attribute) if ok else ""), name
        assert body["amount"] == tx.amount  # exact: a Decimal, compared as a Decimal
        number = _NUMBER.search(raw)
        assert number is not None, raw  # a plain JSON number, no exponent or trailing 0
        assert Decimal(number.group(1).decode()) == tx.amount
        assert body["code"] == ("ok" if ok else "error")
        assert body["reasonCode"] == (0 if ok else tx.reason_code)
        assert isinstance(body["reason"], str) and body["reason"]
        assert body["secure"] == ("yes" if tx.secure else "no")
        assert body["secureDetails"] == ("F" if tx.secure else "")
        assert body["language"] == tx.language.upper()
        assert body["dateTime"] == "2026-02-01T04:59:59.999999000+05:00"
        assert body["ipLatitude"] == 0 and body["ipLongitude"] == 0
        assert set(body) == {
            *_TEXT_FIELDS.values(),
            *_SUCCESS_ONLY.values(),
            "amount",
            "code",
            "dateTime",
            "ipCity",
            "ipCountry",
            "ipDistrict",
            "ipLatitude",
            "ipLongitude",
            "ipRegion",
            "language",
            "reason",
            "reasonCode",
            "secure",
            "secureDetails",
        }

    check()
