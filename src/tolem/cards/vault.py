"""The card vault: a saved card's PAN and expiry, encrypted under the operator's key.

What is stored: the PAN, expiry month and expiry year as compact JSON, never the CVC
(a saved card is charged without one). Nothing about the card is readable without the
key-encryption key (KEK) the operator provides: no BIN, no last four, not even the PAN's
length, since the plaintext is padded to a fixed size and every blob is 204 characters.

Envelope encryption: each card gets a fresh random 32-byte data key that encrypts the card
with AES-256-GCM; the data key is wrapped with AES-256-GCM under the KEK. Rotating the KEK
re-wraps the 60-byte wrapped key of each row (:meth:`CardVault.rewrap`); the card
ciphertext is kept byte for byte (only authenticated, so a damaged row is reported, not
re-wrapped). The old KEK stays in ``retired`` until every row is re-wrapped.

Authenticated data: both layers authenticate the format version and ``bound_to`` (the
saved card's id), each with its own label, so a blob copied onto another row, or a wrapped
key spliced into another blob, does not open.

Blob layout (then base64)::

    version (1) | wrap nonce (12) | wrapped data key (48) | card nonce (12) | card (64 + 16)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tolem.processor.base import Card

VERSION = 1
_KEY_BYTES = 32
_NONCE = 12
_TAG = 16
_PLAINTEXT = 64  # longest card JSON (19-digit PAN) is 60 bytes; pad so length leaks nothing
_WRAPPED = _NONCE + _KEY_BYTES + _TAG  # the 60 bytes rotation rewrites
_BLOB = 1 + _WRAPPED + _NONCE + _PLAINTEXT + _TAG
_BLOB_CHARS = (_BLOB + 2) // 3 * 4
_PAN = re.compile(r"[0-9]{12,19}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")


class VaultError(Exception):
    """A sealed card that cannot be opened. The message never contains card data."""


@dataclass(frozen=True, slots=True)
class SealedCard:
    key_id: str  # which KEK wrapped it (16 lowercase hex chars)
    blob: str  # ASCII (base64), safe for a Text column


def key_id(kek: bytes) -> str:
    """A short public name for a KEK; an HMAC so it reveals nothing about the key."""
    return hmac.new(kek, b"tolem-card-key-id", hashlib.sha256).hexdigest()[:16]


def _aad(layer: bytes, bound_to: str) -> bytes:
    # bound_to is last, after a fixed prefix, so the encoding is unambiguous.
    return b"tolem-card-vault:" + layer + b":" + bytes([VERSION]) + b":" + bound_to.encode()


def _check_kek(kek: bytes) -> AESGCM:
    if not isinstance(kek, bytes | bytearray) or len(kek) != _KEY_BYTES:
        raise ValueError(f"a card vault key must be exactly {_KEY_BYTES} bytes")
    return AESGCM(bytes(kek))


class CardVault:
    """Seals cards under the current KEK; opens cards sealed under it or a retired one."""

    def __init__(self, kek: bytes, *, retired: Sequence[bytes] = ()) -> None:
        self._current = _check_kek(kek)
        self._key_id = key_id(bytes(kek))
        self._keys = {key_id(bytes(old)): _check_kek(old) for old in retired}
        self._keys[self._key_id] = self._current

    @property
    def key_id(self) -> str:
        return self._key_id

    def seal(self, card: Card, *, bound_to: str) -> SealedCard:
        if not bound_to:
            raise ValueError("a sealed card must be bound to a non-empty id")
        _check_card(card.pan, card.exp_month, card.exp_year)
        plain = json.dumps(
            {"pan": card.pan, "exp_month": card.exp_month, "exp_year": card.exp_year},
            separators=(",", ":"),
        ).encode()
        plain = plain.ljust(_PLAINTEXT)  # trailing spaces are valid JSON
        data_key = AESGCM.generate_key(bit_length=256)
        card_nonce = os.urandom(_NONCE)
        sealed = AESGCM(data_key).encrypt(card_nonce, plain, _aad(b"card", bound_to))
        wrapped = self._wrap(data_key, bound_to)
        blob = bytes([VERSION]) + wrapped + card_nonce + sealed
        return SealedCard(self._key_id, base64.b64encode(blob).decode("ascii"))

    def open(self, sealed: SealedCard, *, bound_to: str) -> Card:
        blob, data_key = self._unwrap(sealed, bound_to)
        return _open_card(blob, data_key, bound_to)

    def rewrap(self, sealed: SealedCard, *, bound_to: str) -> SealedCard:
        """The same card under the current KEK: only the wrapped data key changes."""
        blob, data_key = self._unwrap(sealed, bound_to)
        _open_card(blob, data_key, bound_to)  # a row that would not open is not re-wrapped
        rewrapped = blob[:1] + self._wrap(data_key, bound_to) + blob[1 + _WRAPPED :]
        return SealedCard(self._key_id, base64.b64encode(rewrapped).decode("ascii"))

    def _wrap(self, data_key: bytes, bound_to: str) -> bytes:
        nonce = os.urandom(_NONCE)  # random 96-bit nonces: safe far beyond any card count
        return nonce + self._current.encrypt(nonce, data_key, _aad(b"key", bound_to))

    def _unwrap(self, sealed: SealedCard, bound_to: str) -> tuple[bytes, bytes]:
        """The decoded blob and its data key; VaultError for anything else."""
        if not isinstance(sealed.key_id, str) or not _KEY_ID.fullmatch(sealed.key_id):
            raise VaultError("malformed key id")
        kek = self._keys.get(sealed.key_id)
        if kek is None:
            raise VaultError(f"no vault key with id {sealed.key_id}")
        if not isinstance(sealed.blob, str) or len(sealed.blob) != _BLOB_CHARS:
            raise VaultError("malformed sealed card: wrong length")
        try:
            blob = base64.b64decode(sealed.blob, validate=True)
            aad = _aad(b"key", bound_to)
        except ValueError:  # binascii.Error, non-ASCII text, unencodable bound_to
            raise VaultError("malformed sealed card: not base64") from None
        if len(blob) != _BLOB:
            raise VaultError("malformed sealed card: wrong length")
        if blob[0] != VERSION:
            raise VaultError("malformed sealed card: unknown format version")
        nonce, wrapped = blob[1 : 1 + _NONCE], blob[1 + _NONCE : 1 + _WRAPPED]
        try:
            return blob, kek.decrypt(nonce, wrapped, aad)
        except InvalidTag:
            raise VaultError("the sealed card was altered or belongs to another id") from None


def _open_card(blob: bytes, data_key: bytes, bound_to: str) -> Card:
    card_nonce, ciphertext = blob[1 + _WRAPPED : 1 + _WRAPPED + _NONCE], blob[-_PLAINTEXT - _TAG :]
    try:
        plain = AESGCM(data_key).decrypt(card_nonce, ciphertext, _aad(b"card", bound_to))
    except InvalidTag:
        raise VaultError("the sealed card was altered or belongs to another id") from None
    try:
        fields = json.loads(plain)
        pan, exp_month, exp_year = fields["pan"], fields["exp_month"], fields["exp_year"]
        _check_card(pan, exp_month, exp_year)
    except (ValueError, TypeError, KeyError):
        # from None: a JSON error keeps the whole document, the PAN, on the exception
        raise VaultError("the sealed card holds no valid card") from None
    return Card(pan=pan, exp_month=exp_month, exp_year=exp_year, cvc="")


def _check_card(pan: object, exp_month: object, exp_year: object) -> None:
    # The fixed-size plaintext assumes this shape; bool is an int, so exclude it.
    if not isinstance(pan, str) or not _PAN.fullmatch(pan):
        raise ValueError("a card number must be 12 to 19 digits")
    if type(exp_month) is not int or not 1 <= exp_month <= 12:
        raise ValueError("an expiry month must be 1 to 12")
    if type(exp_year) is not int or not 1000 <= exp_year <= 9999:
        raise ValueError("an expiry year must have four digits")
