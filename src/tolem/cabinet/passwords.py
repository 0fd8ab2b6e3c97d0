"""Cabinet passwords: scrypt, a memory-hard KDF from the standard library.

A stored hash is ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``: the parameters
travel with it, so they can be raised later and old hashes still verify (and
:func:`needs_rehash` says which to upgrade at the next login). n = 2**15, r = 8 needs
32 MiB per guess, which is what makes a GPU attack on a stolen table expensive.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["PasswordError", "check_policy", "hash_password", "needs_rehash", "verify_password"]

LOG2_N = 15
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_LENGTH = 8
MAX_LENGTH = 1024  # scrypt hashes any length; this only bounds the work per request
_SCHEME = "scrypt"


class PasswordError(ValueError):
    """A password refused by the policy; the message names the rule, not the password."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"a password has at most {MAX_LENGTH} characters")
    if password.strip() != password:
        raise PasswordError("a password may not start or end with whitespace")


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=129 * n * r * p + 1024 * 1024,
        dklen=HASH_BYTES,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    check_policy(password)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(password, salt, LOG2_N, R, P)
    return f"{_SCHEME}${LOG2_N}${R}${P}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4]), base64.b64decode(parts[5])
    except ValueError:
        return None
    if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return None
    return log2_n, r, p, salt, digest


#: Verified against when the account does not exist, so the answer takes as long.
_DUMMY = f"{_SCHEME}${LOG2_N}${R}${P}${_b64(b'0' * SALT_BYTES)}${_b64(b'0' * HASH_BYTES)}"


def verify_password(stored: str | None, password: str) -> bool:
    """Constant-time check; ``stored=None`` (no such user) spends the same work."""
    parsed = _parse(stored or _DUMMY)
    if parsed is None or len(password) > MAX_LENGTH:
        return False
    log2_n, r, p, salt, digest = parsed
    candidate = _derive(password, salt, log2_n, r, p)
    return hmac.compare_digest(candidate, digest) and stored is not None


def needs_rehash(stored: str) -> bool:
    parsed = _parse(stored)
    return parsed is None or parsed[:3] != (LOG2_N, R, P)
