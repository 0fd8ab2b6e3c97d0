"""The gateway's keys: the cryptogram RSA key, the token, fingerprint and card keys.

Sandbox mode generates them on first start and keeps them in ``<data_dir>/keys`` (files
readable by the owner only), so every worker and every restart uses the same keys.
Production mode never generates a key: it reads them from configuration and refuses
to start without them, or with keys that are not its own (a sandbox key of its data_dir,
one key used twice, a key that is not random).

Rotation (docs/operations.md): the cryptogram key and the card key each take earlier
keys (``TOLEM_RSA_PREVIOUS_KEY_FILES``, ``TOLEM_CARD_PREVIOUS_KEYS``) that still open what
was made under them, while everything new uses the current key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tolem.config import Settings


class KeyConfigError(RuntimeError):
    """A key is missing, unreadable or unsafe; the message says which and how to fix it."""


@dataclass(frozen=True)
class Keyring:
    #: The cryptogram's RSA private keys: the current one (served at /public.rsa) first,
    #: then earlier ones still accepted while shops move to the new key.
    rsa_private: tuple[rsa.RSAPrivateKey, ...]
    token_key: bytes
    fingerprint_key: bytes
    card_key: bytes  # the key-encryption key of saved cards (exactly 32 bytes)
    card_previous: tuple[bytes, ...] = ()  # earlier card keys: they open, never seal

    @property
    def rsa_current(self) -> rsa.RSAPrivateKey:
        return self.rsa_private[0]

    @property
    def card_keys(self) -> tuple[bytes, ...]:
        """The card key, then the earlier ones."""
        return (self.card_key, *self.card_previous)

    @property
    def public_pem(self) -> bytes:
        return self.rsa_current.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_keyring(settings: Settings) -> Keyring:
    if settings.is_sandbox:
        return _sandbox_keyring(settings)
    keyring = _configured_keyring(settings)
    _refuse_unsafe(settings, keyring)
    return keyring


def _configured_keyring(settings: Settings) -> Keyring:
    missing = [
        name
        for name, value in (
            ("TOLEM_RSA_PRIVATE_KEY_FILE", settings.rsa_private_key_file),
            ("TOLEM_TOKEN_KEY", settings.token_key),
            ("TOLEM_FINGERPRINT_KEY", settings.fingerprint_key),
            ("TOLEM_CARD_KEY", settings.card_key),
        )
        if not value
    ]
    if missing:
        raise KeyConfigError("production mode needs " + ", ".join(missing))
    assert settings.rsa_private_key_file is not None
    card_key = _decode_key("TOLEM_CARD_KEY", settings.card_key, exact=True)
    return Keyring(
        rsa_private=_rsa_keys(settings.rsa_private_key_file, settings),
        token_key=_decode_key("TOLEM_TOKEN_KEY", settings.token_key),
        fingerprint_key=_decode_key("TOLEM_FINGERPRINT_KEY", settings.fingerprint_key),
        card_key=card_key,
        card_previous=_previous_card_keys(settings, card_key),
    )


def _sandbox_keyring(settings: Settings) -> Keyring:
    folder = settings.data_dir / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    rsa_file = settings.rsa_private_key_file or folder / "rsa-private.pem"
    if not rsa_file.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=settings.rsa_key_bits)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _create_once(rsa_file, pem)
    token_key = settings.token_key or _sandbox_secret(folder / "token.key")
    fingerprint_key = settings.fingerprint_key or _sandbox_secret(folder / "fingerprint.key")
    card_key = _decode_key(
        "card key", settings.card_key or _sandbox_secret(folder / "card.key"), exact=True
    )
    return Keyring(
        rsa_private=_rsa_keys(rsa_file, settings),
        token_key=_decode_key("token key", token_key),
        fingerprint_key=_decode_key("fingerprint key", fingerprint_key),
        card_key=card_key,
        card_previous=_previous_card_keys(settings, card_key),
    )


def _rsa_keys(current: Path, settings: Settings) -> tuple[rsa.RSAPrivateKey, ...]:
    keys = [_read_rsa(current)]
    for path in settings.rsa_previous_paths:
        key = _read_rsa(path, "TOLEM_RSA_PREVIOUS_KEY_FILES")
        if all(key.public_key().public_numbers() != k.public_key().public_numbers() for k in keys):
            keys.append(key)
    return tuple(keys)


def _previous_card_keys(settings: Settings, current: bytes) -> tuple[bytes, ...]:
    found: list[bytes] = []
    for number, value in enumerate(settings.card_previous_values, 1):
        key = _decode_key(f"TOLEM_CARD_PREVIOUS_KEYS (key {number})", value, exact=True)
        if key != current and key not in found:
            found.append(key)
    return tuple(found)


# --- what production mode refuses ------------------------------------------------------

_MAKE_KEY = "openssl rand -base64 32"


def _refuse_unsafe(settings: Settings, keyring: Keyring) -> None:
    """Production keys must be the operator's own, random, and each used for one thing."""
    secrets_by_name = [
        ("TOLEM_TOKEN_KEY", keyring.token_key),
        ("TOLEM_FINGERPRINT_KEY", keyring.fingerprint_key),
        ("TOLEM_CARD_KEY", keyring.card_key),
    ] + [
        (f"TOLEM_CARD_PREVIOUS_KEYS (key {n})", key)
        for n, key in enumerate(keyring.card_previous, 1)
    ]
    for name, key in secrets_by_name:
        if problem := weakness(key):
            raise KeyConfigError(f"{name} {problem}; make one with: {_MAKE_KEY}")
    for i, (name, key) in enumerate(secrets_by_name):
        for other, other_key in secrets_by_name[:i]:
            if hmac.compare_digest(key, other_key):
                raise KeyConfigError(f"{name} is the same key as {other}: each needs its own")
    # Keys a sandbox run generated in this data_dir are test keys, whatever they look like.
    folder = settings.data_dir / "keys"
    for file_name in ("token.key", "fingerprint.key", "card.key"):
        sandbox_key = _file_key(folder / file_name)
        for name, key in secrets_by_name:
            if sandbox_key is not None and hmac.compare_digest(key, sandbox_key):
                raise KeyConfigError(
                    f"{name} is the sandbox key {folder / file_name}: production needs keys "
                    f"of its own; make one with: {_MAKE_KEY}"
                )
    sandbox_rsa = folder / "rsa-private.pem"
    sandbox_numbers = None
    if sandbox_rsa.is_file():
        with contextlib.suppress(KeyConfigError):
            sandbox_numbers = _read_rsa(sandbox_rsa).public_key().public_numbers()
    for rsa_key in keyring.rsa_private:
        if rsa_key.key_size < 2048:
            raise KeyConfigError(f"the cryptogram RSA key has {rsa_key.key_size} bits: use 4096")
        if rsa_key.public_key().public_numbers() == sandbox_numbers:
            raise KeyConfigError(
                f"the cryptogram RSA key is the sandbox key {sandbox_rsa}: production needs "
                "its own (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096)"
            )


def weakness(key: bytes) -> str:
    """Why a secret key cannot be random, or "" (32 random bytes pass with certainty)."""
    distinct = len(set(key))
    if distinct < 16:
        return (
            f"is not random: it has only {distinct} different byte values "
            "(zeros? a repeated pattern?)"
        )
    if all(0x20 <= byte < 0x7F for byte in key):
        return "is text, not random bytes (base64 of a password?)"
    return ""


def _file_key(path: Path) -> bytes | None:
    try:
        return base64.b64decode(path.read_text().strip(), validate=True)
    except (OSError, ValueError):
        return None


def _sandbox_secret(path: Path) -> str:
    if not path.exists():
        _create_once(path, base64.b64encode(secrets.token_bytes(32)) + b"\n")
    return path.read_text().strip()


def _create_once(path: Path, content: bytes) -> None:
    """Write a new key file atomically; if another process won the race, keep theirs."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)  # fails if the file exists: the first writer wins
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _read_rsa(path: Path, setting: str = "") -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        where = f" ({setting})" if setting else ""
        raise KeyConfigError(f"cannot read the RSA private key {path}{where}: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyConfigError(f"{path} is not an RSA private key")
    return key


def _decode_key(name: str, value: str, *, exact: bool = False) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyConfigError(f"{name} is not base64") from exc
    if exact and len(raw) != 32:  # an AES-256 key: a longer one would be cut silently
        raise KeyConfigError(f"{name} must hold exactly 32 bytes")
    if len(raw) < 32:
        raise KeyConfigError(f"{name} must hold at least 32 bytes")
    return raw
