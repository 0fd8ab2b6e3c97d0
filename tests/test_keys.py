"""Sandbox keys: generated once, kept, owner-only; size configurable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tolem.config import Mode, Settings
from tolem.keys import KeyConfigError, load_keyring


def test_sandbox_keys_are_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = load_keyring(settings)
    second = load_keyring(settings)
    assert first.public_pem == second.public_pem
    assert first.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert first.rsa_private.key_size == 2048
    assert (first.token_key, first.fingerprint_key) == (second.token_key, second.fingerprint_key)
    assert first.token_key != first.fingerprint_key
    for name in ("rsa-private.pem", "token.key", "fingerprint.key"):
        mode = stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_key_size_is_configurable(tmp_path: Path) -> None:
    assert load_keyring(Settings(data_dir=tmp_path, rsa_key_bits=4096)).rsa_private.key_size == 4096
    with pytest.raises(ValueError, match="2048, 3072 or 4096"):
        Settings(data_dir=tmp_path, rsa_key_bits=1024)


def test_production_never_generates_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="TOLEM_TOKEN_KEY"):
        load_keyring(Settings(data_dir=tmp_path, mode=Mode.PRODUCTION))
    assert not (tmp_path / "keys").exists()
