"""Card data handling: the only place a PAN is looked at.

What may leave this module: the mask (first six, last four), the brand, and a keyed
fingerprint (HMAC-SHA256 under the operator's fingerprint key). Never the PAN or CVC.
"""

from __future__ import annotations

import hashlib
import hmac
import re

# Digits with the spaces or dashes people type between groups.
_TYPED_NUMBER = re.compile(r"[0-9](?:[ -]?[0-9]){11,18}")


def luhn_ok(pan: str) -> bool:
    if not (pan.isascii() and pan.isdigit()) or not 12 <= len(pan) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_complete(partial: str) -> str:
    """Append the check digit that makes ``partial`` pass Luhn."""
    for digit in "0123456789":
        if luhn_ok(partial + digit):
            return partial + digit
    raise AssertionError("unreachable")


def holds_pan(text: str) -> bool:
    """Whether free text holds something that looks like a card number (Luhn-valid)."""
    return any(
        luhn_ok(re.sub(r"[ -]", "", match.group())) for match in _TYPED_NUMBER.finditer(text)
    )


def mask(pan: str) -> str:
    """ePay's mask: ``440563...5096``."""
    return f"{pan[:6]}...{pan[-4:]}"


def brand(pan: str) -> str:
    """Card scheme as ePay names it in ``cardType``."""
    if pan.startswith("4"):
        return "VISA"
    two, four = int(pan[:2]), int(pan[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return "MASTERCARD"
    if two in (34, 37):
        return "AMEX"
    if 2200 <= four <= 2204:
        return "MIR"
    if two == 62:
        return "UNIONPAY"
    if two in (50, 56, 57, 58, 63, 67):
        return "MAESTRO"
    return "UNKNOWN"


def cvc_length(pan: str) -> int:
    return 4 if brand(pan) == "AMEX" else 3


def fingerprint(key: bytes, pan: str) -> str:
    """A keyed, non-reversible identifier of a card number."""
    return hmac.new(key, pan.encode("ascii"), hashlib.sha256).hexdigest()
