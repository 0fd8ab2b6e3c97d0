"""Access tokens: sealed, self-contained, verified without a database read.

A token is AES-256-GCM over a compact JSON list of its claims, keyed by the gateway's
token key, then base64url. Anyone holding it can use it (a bearer token), nobody can
read or alter what it binds (invoice, amount, links, secret_hash), and every worker
verifies it with the shared key alone. A token of another key, or one that has been
altered in any way, simply fails to open.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = 1
_AAD = b"tolem-access-token-v1"


@dataclass(frozen=True, slots=True)
class AccessToken:
    merchant_id: str
    terminal_id: str  # "" when the token names no terminal
    scope: str
    invoice_id: str  # "" for a service token
    amount: Decimal | None
    currency: str
    post_link: str
    failure_post_link: str
    secret_hash: str
    expires_at: int  # unix seconds
    #: A cabinet user's token (grant_type=password or refresh_token): the user's id;
    #: "" for a client_credentials token.
    user_id: str = ""

    @property
    def is_user(self) -> bool:
        """Issued to a cabinet user (password or refresh grant), not to a shop's client."""
        return bool(self.user_id)

    @property
    def is_service(self) -> bool:
        """A token without an invoice: broad scope, reusable until it expires."""
        return not self.invoice_id

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.expires_at


class TokenInvalid(ValueError):
    pass


class TokenSealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key[:32])

    def seal(self, token: AccessToken) -> str:
        claims = [
            _VERSION,
            token.merchant_id,
            token.terminal_id,
            token.scope,
            token.invoice_id,
            None if token.amount is None else str(token.amount),
            token.currency,
            token.post_link,
            token.failure_post_link,
            token.secret_hash,
            token.expires_at,
        ]
        if token.user_id:
            # Only user tokens carry a twelfth claim: client_credentials tokens stay
            # exactly as before, and a gateway that predates user tokens refuses them.
            claims.append(token.user_id)
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, orjson.dumps(claims), _AAD)
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def open(self, text: str) -> AccessToken:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as exc:
            raise TokenInvalid("malformed token") from exc
        if len(raw) < 12 + 16:
            raise TokenInvalid("malformed token")
        try:
            plain = self._aead.decrypt(raw[:12], raw[12:], _AAD)
            claims = orjson.loads(plain)
            if claims[0] != _VERSION or len(claims) not in (11, 12):
                raise TokenInvalid("unknown token version")
            user_id = claims[11] if len(claims) == 12 else ""
            if not isinstance(user_id, str) or (len(claims) == 12 and not user_id):
                raise TokenInvalid("token does not verify")
            amount = None if claims[5] is None else Decimal(claims[5])
            return AccessToken(
                merchant_id=claims[1],
                terminal_id=claims[2],
                scope=claims[3],
                invoice_id=claims[4],
                amount=amount,
                currency=claims[6],
                post_link=claims[7],
                failure_post_link=claims[8],
                secret_hash=claims[9],
                expires_at=int(claims[10]),
                user_id=user_id,
            )
        except (InvalidTag, orjson.JSONDecodeError, InvalidOperation, IndexError, TypeError) as exc:
            raise TokenInvalid("token does not verify") from exc
