"""Rules for the fields every ePay request shares: amounts, invoices, currencies, links.

Each parser takes what arrived on the wire (a JSON number, a numeric string, a form
value) and returns the clean value or raises :class:`FieldError` naming the field.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import idna

from tolem import carddata

INVOICE_RE = re.compile(r"[0-9]{6,15}")  # ASCII digits: \d also takes "١٢٣"
CURRENCY_RE = re.compile(r"[A-Z]{3}")
MAX_AMOUNT = Decimal("999999999999.99")


class FieldError(ValueError):
    def __init__(self, field: str, message: str, *, code: int = 477) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.code = code


def amount(value: Any, field: str = "amount", *, allow_zero: bool = False) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise FieldError(field, "must be a number", code=470)
    if isinstance(value, float):  # never reached from our JSON parser; guards callers
        value = repr(value)
    try:
        parsed = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise FieldError(field, "must be a number", code=470) from exc
    if not parsed.is_finite():
        raise FieldError(field, "must be a number", code=470)
    if parsed < 0 or (parsed == 0 and not allow_zero):
        raise FieldError(field, "must be greater than zero", code=470)
    if parsed > MAX_AMOUNT:  # before quantize, which cannot represent 1e400 at 0.01
        raise FieldError(field, "too large", code=470)
    cents = parsed.quantize(Decimal("0.01"))
    if parsed != cents:
        raise FieldError(field, "at most two decimal places", code=470)
    return cents


def invoice(value: Any, field: str = "invoiceId") -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FieldError(field, "must be a string of 6 to 15 digits")
    text = str(value).strip()
    if not INVOICE_RE.fullmatch(text):
        raise FieldError(field, "must be 6 to 15 digits")
    return text


def currency(value: Any, field: str = "currency") -> str:
    if (
        not isinstance(value, str)
        or not value.isascii()  # "ßk".upper() is "SSK"
        or not CURRENCY_RE.fullmatch(value.strip().upper())
    ):
        raise FieldError(field, "must be a three-letter ISO 4217 code such as KZT")
    return value.strip().upper()


def link(value: Any, field: str) -> str:
    """An http(s) URL or empty: javascript:, data: and friends are refused."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(field, "must be a string")
    text = value.strip()
    if not text:
        return ""
    if len(text) > 2048:
        raise FieldError(field, "longer than 2048 characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise FieldError(field, "must be an http or https URL (no spaces or control characters)")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises for a port that is not a number
        host = parts.hostname or ""
        if not host.isascii():  # an internationalised name must have a DNS form
            idna.encode(host, uts46=True)
    except (ValueError, idna.IDNAError):  # "http://[", a host that does not normalise, …
        raise FieldError(field, "must be an http or https URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise FieldError(field, "must be an http or https URL")
    return text


def text(value: Any, field: str, *, max_length: int, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise FieldError(field, "is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise FieldError(field, "must be a string")
    result = str(value)
    if len(result) > max_length:
        raise FieldError(field, f"longer than {max_length} characters")
    if required and not result.strip():
        raise FieldError(field, "is required")
    return result


def free_text(value: Any, field: str, *, max_length: int, required: bool = False) -> str:
    """Text a shop writes as it likes (a description, a name, ``data``): :func:`text`,
    refused if it holds a card number (:func:`tolem.carddata.card_number_in`).

    tolem never stores a card number, and a shop that sends one in free text has a bug
    it should hear about, not a payment quietly rewritten; the answer shows the mask.
    """
    result = text(value, field, max_length=max_length, required=required)
    pan = carddata.card_number_in(result)
    if pan is not None:
        raise FieldError(
            field,
            f"holds a card number ({carddata.mask(pan)}); tolem never stores card numbers,"
            " send at most its mask",
        )
    return result


LANGUAGES = {
    "rus": "rus",
    "ru": "rus",
    "kaz": "kaz",
    "kz": "kaz",
    "kk": "kaz",
    "eng": "eng",
    "en": "eng",
}


def language(value: Any) -> str:
    """ePay languages in every spelling seen (rus/RU, kaz/kz/kk, eng/en); default rus."""
    if not isinstance(value, str) or not value.strip():
        return "rus"
    return LANGUAGES.get(value.strip().lower(), "rus")


def boolean(value: Any, field: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise FieldError(field, "must be true or false")
