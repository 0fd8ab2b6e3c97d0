"""The card cryptogram: RSA PKCS#1 v1.5 over compact JSON, in standard base64.

``{"hpan":"4405639704015096","expDate":"0125","cvc":"815","terminalId":"…"}``

Decryption errors are reported without detail that could serve as a padding oracle:
a wrong length, bad padding and a plaintext that is not JSON get the same answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tolem.processor.base import Card
from tolem.wire import text_problem

# ASCII digits only: \d also matches other scripts' digits, which int() then accepts.
_PAN_RE = re.compile(r"[0-9]{12,19}")
_EXP_RE = re.compile(r"[0-9]{4}")
_CVC_RE = re.compile(r"[0-9]{1,4}")
_WHITESPACE = re.compile(r"\s+")


class CryptogramError(ValueError):
    pass


_UNREADABLE = (
    "cryptogram does not decrypt to card data: encrypt the JSON with this gateway's "
    "/public.rsa, RSA PKCS#1 v1.5"
)


def decrypt(
    private_key: rsa.RSAPrivateKey | Sequence[rsa.RSAPrivateKey], text: str
) -> tuple[Card, str]:
    """The card and the terminalId a cryptogram holds.

    ``private_key`` may be several keys during a rotation: the current one first, then
    earlier ones; the first that opens the cryptogram to a JSON object wins.
    """
    keys = (private_key,) if isinstance(private_key, rsa.RSAPrivateKey) else private_key
    try:
        raw = base64.b64decode(_WHITESPACE.sub("", text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptogramError("cryptogram is not standard base64") from exc
    # One message for every way decryption can fail (wrong length, bad padding, noise
    # that is not JSON), whichever key failed: distinct answers would make a padding
    # oracle on an OpenSSL without implicit rejection.
    not_an_object = False
    for key in keys:
        if len(raw) != key.key_size // 8:
            continue
        try:
            data = json.loads(key.decrypt(raw, padding.PKCS1v15()))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict):
            return _card(data), _string(data, "terminalId")
        # Implicit rejection turns a wrong key's answer into random bytes, which may
        # happen to be JSON such as a lone digit: the next key may still open it.
        not_an_object = True
    if not_an_object:
        raise CryptogramError("cryptogram must hold a JSON object")
    raise CryptogramError(_UNREADABLE)


def _string(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CryptogramError(f"cryptogram: {name} is missing or not a string")
    text = str(value).strip()
    if len(text) > 64 or text_problem(text):
        raise CryptogramError(f"cryptogram: {name} is not a valid value")
    return text


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
