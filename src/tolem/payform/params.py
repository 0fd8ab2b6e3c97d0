"""The hosted page's ``params``: what ``halyk.pay()`` puts in the URL, decoded and checked.

The live script builds the link as
``/payform/?params=`` + ``LZString.compressToEncodedURIComponent(encodeParams(p))``,
where ``encodeParams`` writes ``key=encodeURIComponent(value)`` pairs joined by ``&``
and encodes a nested object (``auth``, the token response) the same way, one level
down. This module undoes that and turns the pairs into a :class:`PayformRequest`.
Every problem is a :class:`ParamsError` naming the field, never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from tolem import fields, wire
from tolem.payform.lzstring import LZStringError, decompress_from_encoded_uri_component
from tolem.payments.service import CARD_VERIFICATION, PaymentOrder

#: Longest ``params`` accepted (characters of the compressed form).
MAX_PARAMS = 16384
#: Longest decoded query string: far above any real payment object.
MAX_DECODED = 65536

_TEXT_LIMITS = {
    "description": 1000,
    "accountid": 100,
    "email": 200,
    "phone": 50,
    "name": 200,
    "data": 4000,
    "terminal": 36,
    "paymenttype": 32,
}
#: The fields a shop writes as it likes: none may hold a card number.
_FREE_TEXT = frozenset({"description", "accountid", "email", "phone", "name", "data"})


class ParamsError(ValueError):
    """The link cannot be used; ``field`` names the culprit ("params" for the whole)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class SessionExpired(ValueError):
    """No usable ``auth``: missing, a bare access_token, expired or not ours."""


@dataclass(frozen=True)
class PayformRequest:
    """A decoded, checked payment object: the order plus the page's own options."""

    order: PaymentOrder
    auto_back_link: bool

    @property
    def is_verification(self) -> bool:
        return self.order.is_verification


def decode(params: str) -> dict[str, str]:
    """The decompressed key/value pairs (keys lower-cased; nested values still encoded)."""
    if not params:
        raise ParamsError("params", "missing: open the page with halyk.pay()")
    if len(params) > MAX_PARAMS:
        raise ParamsError("params", f"longer than {MAX_PARAMS} characters")
    try:
        text = decompress_from_encoded_uri_component(params, max_output=MAX_DECODED)
    except LZStringError as exc:
        raise ParamsError("params", "damaged link: not LZString of encodeParams") from exc
    return query_pairs(text)


def query_pairs(text: str) -> dict[str, str]:
    """``key=encodeURIComponent(value)&…`` as a dict; the first of repeated keys wins."""
    pairs: dict[str, str] = {}
    for part in text.split("&"):
        if not part:
            continue
        key, _, raw = part.partition("=")
        try:
            value = unquote(raw, errors="strict")
        except UnicodeDecodeError as exc:
            raise ParamsError(key or "params", "not valid percent-encoded UTF-8") from exc
        problem = wire.text_problem(key) or wire.text_problem(value)
        if problem:
            raise ParamsError(key or "params", problem)
        pairs.setdefault(key.strip().lower(), value)
    return pairs


def access_token(pairs: dict[str, str]) -> str:
    """The access_token of ``auth``: the whole token response, as the live page wants.

    ``auth`` arrives as a nested query string (what encodeParams makes of an object);
    a JSON object is accepted too. A bare access_token string is what the live page
    answers with "expired" at once, and so does tolem.
    """
    raw = pairs.get("auth", "").strip()
    if not raw:
        raise SessionExpired("auth is missing")
    auth: dict[str, Any]
    if raw.startswith("{"):
        try:  # depth-limited: a link may be anything
            auth = wire.parse_json_object(raw.encode("utf-8"))
        except wire.BodyError as exc:
            raise SessionExpired("auth is not the token response") from exc
    elif "=" in raw:
        auth = query_pairs(raw)
    else:
        raise SessionExpired("auth holds a bare access_token, not the token response")
    token = auth.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise SessionExpired("auth has no access_token")
    return token.strip()


def parse(pairs: dict[str, str]) -> PayformRequest:
    """Check the payment object's fields; the first problem raises :class:`ParamsError`."""
    try:
        return _parse(pairs)
    except fields.FieldError as exc:
        raise ParamsError(exc.field, str(exc).split(": ", 1)[-1]) from None


def _parse(pairs: dict[str, str]) -> PayformRequest:
    def text(name: str, *, required: bool = False) -> str:
        limit = _TEXT_LIMITS[name.lower()]
        # The shop's free text is refused if it holds a card number (fields.free_text).
        read = fields.free_text if name.lower() in _FREE_TEXT else fields.text
        return read(pairs.get(name.lower(), ""), name, max_length=limit, required=required).strip()

    payment_type = text("paymentType")
    verification = payment_type.lower() == CARD_VERIFICATION.lower()
    raw_amount = pairs.get("amount", "").strip()
    if not raw_amount:
        raise fields.FieldError("amount", "is required")
    amount = fields.amount(raw_amount, allow_zero=verification)
    if verification and amount != Decimal(0):
        raise fields.FieldError("amount", "a card verification has amount 0")
    raw_alt = pairs.get("invoiceidalt", "").strip()
    order = PaymentOrder(
        amount=amount,
        currency=fields.currency(pairs.get("currency") or ("USD" if verification else "KZT")),
        name=text("name"),
        invoice_id=fields.invoice(pairs.get("invoiceid", ""), "invoiceId"),
        description=text("description"),
        invoice_id_alt=fields.invoice(raw_alt, "invoiceIdAlt") if raw_alt else "",
        account_id=text("accountId"),
        email=text("email"),
        phone=text("phone"),
        post_link=fields.link(pairs.get("postlink"), "postLink"),
        failure_post_link=fields.link(pairs.get("failurepostlink"), "failurePostLink"),
        card_save=fields.boolean(pairs.get("cardsave", "").strip(), "cardSave") or verification,
        data=text("data"),
        language=fields.language(pairs.get("language")),
        terminal_id=text("terminal"),
        payment_type=CARD_VERIFICATION if verification else payment_type,
        back_link=fields.link(pairs.get("backlink"), "backLink"),
        failure_back_link=fields.link(pairs.get("failurebacklink"), "failureBackLink"),
    )
    auto = fields.boolean(pairs.get("autobacklink", "").strip(), "autoBackLink")
    return PayformRequest(order=order, auto_back_link=auto)
