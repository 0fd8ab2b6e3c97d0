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


# Free text a shop sends (a description, a name, ``data``): digits in groups joined by a
# single space or dash, not touching other digits. A UUID is matched first and left
# alone: two of its groups can be all digits by chance.
_GROUPED_DIGITS = re.compile(
    r"(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"|(?<![0-9])[0-9]+(?:[ -][0-9]+)*(?![0-9])"
)
# 13 digits with at most one separator between them: cheap to look for, and most text
# has none, so the precise search seldom runs.
_THIRTEEN_DIGITS = re.compile(r"[0-9](?:[ -]?[0-9]){12}")


def card_number_in(text: str) -> str | None:
    """The first card number written in a shop's free text, or None.

    A card number here is 13 to 19 digits, written plain or in groups joined by single
    spaces or dashes ("4405 6397 0401 5096", "4405-6397-0401-5096"), not part of a longer
    run of digits, that passes the Luhn check and starts with a card brand's prefix
    (:func:`has_card_prefix`). The rule is narrow on purpose: a 16-digit order number is a card
    number only if it also has a brand's prefix and passes Luhn (about 1 in 30 random
    ones do), and a 12-digit IIN, an 11-digit phone number or a 13-digit timestamp in
    milliseconds never is. The answer is only ever shown as :func:`mask` shows it.
    """
    if len(text) < 13 or _THIRTEEN_DIGITS.search(text) is None:
        return None
    for match in _GROUPED_DIGITS.finditer(text):
        if match.group("uuid"):
            continue
        groups = re.split("[ -]", match.group())
        # Any stretch of whole groups may be the card number: "4405 6397 0401 5096 12 27"
        # holds one followed by its expiry date.
        for i in range(len(groups)):
            digits = ""
            for group in groups[i:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and has_card_prefix(digits) and luhn_ok(digits):
                    return digits
    return None


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


def has_card_prefix(digits: str) -> bool:
    """Whether digits start as a card number does: a brand tolem names (:func:`brand`),
    or one it does not name but cards carry (JCB, Diners Club, Discover)."""
    if brand(digits) != "UNKNOWN":
        return True
    three, four = int(digits[:3]), int(digits[:4])
    return (
        3528 <= four <= 3589  # JCB
        or 300 <= three <= 305  # Diners Club
        or digits[:2] in ("36", "38", "39")
        or four == 6011  # Discover
        or 644 <= three <= 649
        or digits[:2] == "65"
    )


def cvc_length(pan: str) -> int:
    return 4 if brand(pan) == "AMEX" else 3


def fingerprint(key: bytes, pan: str) -> str:
    """A keyed, non-reversible identifier of a card number."""
    return hmac.new(key, pan.encode("ascii"), hashlib.sha256).hexdigest()
