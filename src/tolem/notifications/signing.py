"""Signed postLinks (beyond ePay, off by default): Standard Webhooks headers.

A merchant with a signing secret gets ``webhook-id`` (the notification's id, the same
on every retry), ``webhook-timestamp`` and ``webhook-signature`` on each postLink, so it
can check that the body came from its gateway and is fresh. The secret is kept sealed
(AES-256-GCM under a key derived from the card key), since the gateway must be able to
use it, not merely to check it. After the card key is rotated, secrets sealed under an
earlier card key still open (:func:`unseal` takes them all) until ``tolem keys rewrap``
seals them again under the current one (:func:`reseal`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from standardwebhooks import Webhook

PREFIX = "whsec_"


class SigningSecretError(ValueError):
    """A sealed secret that does not open (another key, or altered)."""


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes, the format Standard Webhooks libraries take."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _aead(card_key: bytes) -> AESGCM:
    return AESGCM(hmac.new(card_key, b"tolem-signing-secrets", hashlib.sha256).digest())


def seal(card_key: bytes, merchant_id: str, secret: str) -> str:
    nonce = os.urandom(12)
    sealed = _aead(card_key).encrypt(nonce, secret.encode("ascii"), merchant_id.encode())
    return base64.b64encode(nonce + sealed).decode("ascii")


def unseal(card_key: bytes | Sequence[bytes], merchant_id: str, sealed: str) -> str:
    """The secret; ``card_key`` may be the card keys of a rotation, the current one first."""
    keys = (card_key,) if isinstance(card_key, bytes) else card_key
    try:
        raw = base64.b64decode(sealed, validate=True)
    except ValueError as exc:
        raise SigningSecretError("the signing secret is not base64") from exc
    for key in keys:
        try:
            plain = _aead(key).decrypt(raw[:12], raw[12:], merchant_id.encode())
        except (InvalidTag, ValueError):
            continue
        return plain.decode("ascii")
    raise SigningSecretError("the signing secret does not open with the card keys")


def reseal(card_keys: Sequence[bytes], merchant_id: str, sealed: str) -> str | None:
    """The secret sealed under ``card_keys[0]``; None if it already is."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        _aead(card_keys[0]).decrypt(raw[:12], raw[12:], merchant_id.encode())
    except (InvalidTag, ValueError):
        return seal(card_keys[0], merchant_id, unseal(card_keys, merchant_id, sealed))
    return None


def headers(
    secret: str, notification_id: str, body: str, now: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    moment = now or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id=notification_id, timestamp=moment, data=body)
    return {
        "webhook-id": notification_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
    }
