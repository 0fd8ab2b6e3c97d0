"""PaReq and PaRes: deflated JSON under an HMAC, in standard base64.

Shaped like the live messages (base64 of zlib-deflated data, so they start ``eJ``),
tamper-evident (HMAC-SHA256 under a key derived from the gateway's token key, one
derivation per message kind so a PaReq can never pass as a PaRes) and expiring.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import zlib
from typing import Any

_MAC_BYTES = 32


class SealError(ValueError):
    pass


class MessageSealer:
    def __init__(self, root_key: bytes, kind: str) -> None:
        self._key = hmac.new(root_key, f"tolem-3ds-{kind}".encode(), hashlib.sha256).digest()

    def seal(self, claims: dict[str, Any], ttl: int) -> str:
        body = json.dumps({**claims, "exp": int(time.time()) + ttl}, separators=(",", ":"))
        packed = zlib.compress(body.encode("utf-8"))
        mac = hmac.new(self._key, packed, hashlib.sha256).digest()
        return base64.b64encode(packed + mac).decode("ascii")

    def open(self, text: str) -> dict[str, Any]:
        try:
            raw = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SealError("not base64") from exc
        if len(raw) <= _MAC_BYTES:
            raise SealError("too short")
        packed, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(hmac.new(self._key, packed, hashlib.sha256).digest(), mac):
            raise SealError("signature does not verify")
        try:
            claims = json.loads(zlib.decompress(packed, bufsize=4096))
        except (zlib.error, ValueError) as exc:  # only reachable with our own key
            raise SealError("unreadable") from exc
        if not isinstance(claims, dict) or int(claims.get("exp", 0)) < time.time():
            raise SealError("expired")
        return claims
