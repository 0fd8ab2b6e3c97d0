"""The card cryptogram: RSA PKCS#1 v1.5 over compact JSON, in standard base64.

``{"hpan":"4405639704015096","expDate":"0125","cvc":"815","terminalId":"…"}``

Decryption errors are reported without detail that could serve as a padding oracle:
with OpenSSL's implicit rejection a tampered ciphertext decrypts to noise, which then
fails as JSON; both answers carry the same code.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tolem.processor.base import Card

_PAN_RE = re.compile(r"\d{12,19}")
_EXP_RE = re.compile(r"\d{4}")
_CVC_RE = re.compile(r"\d{1,4}")
_WHITESPACE = re.compile(r"\s+")


class CryptogramError(ValueError):
    pass


def encrypt(public_key: rsa.RSAPublicKey, content: dict[str, Any]) -> str:
    """What a shop does: for tests, tools and the SDK."""
    plain = json.dumps(content, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(public_key.encrypt(plain, padding.PKCS1v15())).decode("ascii")


def decrypt(private_key: rsa.RSAPrivateKey, text: str) -> tuple[Card, str]:
    """The card and the terminalId a cryptogram holds."""
    try:
        raw = base64.b64decode(_WHITESPACE.sub("", text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptogramError("cryptogram is not standard base64") from exc
    if len(raw) != private_key.key_size // 8:
        raise CryptogramError(
            "cryptogram does not decrypt: it was not made with this gateway's public key"
        )
    try:
        plain = private_key.decrypt(raw, padding.PKCS1v15())
    except ValueError as exc:
        raise CryptogramError("cryptogram does not decrypt") from exc
    try:
        data = json.loads(plain)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CryptogramError(
            "cryptogram does not hold JSON: was it made with this gateway's public key?"
        ) from exc
    if not isinstance(data, dict):
        raise CryptogramError("cryptogram must hold a JSON object")
    return _card(data), _string(data, "terminalId")


def _string(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CryptogramError(f"cryptogram: {name} is missing or not a string")
    return str(value).strip()


def _card(data: dict[str, Any]) -> Card:
    pan = _string(data, "hpan").replace(" ", "")
    if not _PAN_RE.fullmatch(pan):
        raise CryptogramError("cryptogram: hpan must be 12 to 19 digits")
    exp = _string(data, "expDate").zfill(4)
    if not _EXP_RE.fullmatch(exp):
        raise CryptogramError("cryptogram: expDate must be MMYY")
    cvc = _string(data, "cvc")
    if not _CVC_RE.fullmatch(cvc):
        raise CryptogramError("cryptogram: cvc must be 3 or 4 digits")
    return Card(pan=pan, exp_month=int(exp[:2]), exp_year=2000 + int(exp[2:]), cvc=cvc)
