"""ePay reason codes (EPAY.md section 11) in English and Russian, for the SDK's errors."""

from __future__ import annotations

from tolem.reasons import REASONS as ENGLISH
from tolem.reasons import RUSSIAN

__all__ = ["ENGLISH", "RUSSIAN", "english", "russian"]


def english(code: int | None) -> str | None:
    return None if code is None else ENGLISH.get(code)


def russian(code: int | None) -> str | None:
    return None if code is None else RUSSIAN.get(code)
