"""The gateway's keys: the cryptogram RSA key, the token, fingerprint and card keys.

Sandbox mode generates them on first start and keeps them in ``<data_dir>/keys`` (files
readable by the owner only), so every worker and every restart uses the same keys.
Production mode never generates a key: it reads them from configuration and refuses
to start without them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tolem.config import Settings


class KeyConfigError(RuntimeError):
    """A key is missing or unreadable; the message says which and how to fix it."""


@dataclass(frozen=True)
class Keyring:
    rsa_private: rsa.RSAPrivateKey
    token_key: bytes
    fingerprint_key: bytes
    card_key: bytes  # the key-encryption key of saved cards (exactly 32 bytes)

    @property
    def public_pem(self) -> bytes:
        return self.rsa_private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_keyring(settings: Settings) -> Keyring:
    if settings.is_sandbox:
        return _sandbox_keyring(settings)
    return _configured_keyring(settings)


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
    return Keyring(
        rsa_private=_read_rsa(settings.rsa_private_key_file),
        token_key=_decode_key("TOLEM_TOKEN_KEY", settings.token_key),
        fingerprint_key=_decode_key("TOLEM_FINGERPRINT_KEY", settings.fingerprint_key),
        card_key=_decode_key("TOLEM_CARD_KEY", settings.card_key, exact=True),
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
    card_key = settings.card_key or _sandbox_secret(folder / "card.key")
    return Keyring(
        rsa_private=_read_rsa(rsa_file),
        token_key=_decode_key("token key", token_key),
        fingerprint_key=_decode_key("fingerprint key", fingerprint_key),
        card_key=_decode_key("card key", card_key, exact=True),
    )


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


def _read_rsa(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyConfigError(f"cannot read the RSA private key {path}: {exc}") from exc
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
