"""Sealed access tokens."""

from __future__ import annotations

import os
import time
from decimal import Decimal

import pytest

from tolem.oauth.tokens import AccessToken, TokenInvalid, TokenSealer


def _token(**overrides: object) -> AccessToken:
    values: dict[str, object] = {
        "merchant_id": "m",
        "terminal_id": "t",
        "scope": "payment",
        "invoice_id": "000001",
        "amount": Decimal("100.00"),
        "currency": "KZT",
        "post_link": "https://shop.kz/post",
        "failure_post_link": "",
        "secret_hash": "s3cr3t",
        "expires_at": int(time.time()) + 60,
    }
    values.update(overrides)
    return AccessToken(**values)  # type: ignore[arg-type]


def test_round_trip() -> None:
    sealer = TokenSealer(os.urandom(32))
    token = _token()
    assert sealer.open(sealer.seal(token)) == token
    assert sealer.seal(token) != sealer.seal(token)  # a fresh nonce each time


def test_secret_hash_is_not_readable_in_the_token() -> None:
    sealer = TokenSealer(os.urandom(32))
    text = sealer.seal(_token(secret_hash="VISIBLE-SECRET"))
    import base64

    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert b"VISIBLE-SECRET" not in raw and b"000001" not in raw


def test_any_change_or_another_key_fails() -> None:
    key = os.urandom(32)
    text = TokenSealer(key).seal(_token())
    for i in range(0, len(text), 7):
        flipped = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
        with pytest.raises(TokenInvalid):
            TokenSealer(key).open(flipped)
    with pytest.raises(TokenInvalid):
        TokenSealer(os.urandom(32)).open(text)
    for junk in ("", "abc", "!!!!", "a" * 500):
        with pytest.raises(TokenInvalid):
            TokenSealer(key).open(junk)


def test_service_token_and_expiry() -> None:
    token = _token(invoice_id="", amount=None, expires_at=int(time.time()) - 1)
    assert token.is_service
    assert token.expired()
    assert not _token().expired()
