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
    assert first.rsa_current.key_size == 2048
    assert (first.token_key, first.fingerprint_key) == (second.token_key, second.fingerprint_key)
    assert first.token_key != first.fingerprint_key
    for name in ("rsa-private.pem", "token.key", "fingerprint.key"):
        mode = stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_key_size_is_configurable(tmp_path: Path) -> None:
    assert load_keyring(Settings(data_dir=tmp_path, rsa_key_bits=4096)).rsa_current.key_size == 4096
    with pytest.raises(ValueError, match="2048, 3072 or 4096"):
        Settings(data_dir=tmp_path, rsa_key_bits=1024)


def test_production_never_generates_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="TOLEM_TOKEN_KEY"):
        load_keyring(Settings(data_dir=tmp_path, mode=Mode.PRODUCTION))
    assert not (tmp_path / "keys").exists()


def test_a_cryptogram_opens_with_the_current_or_a_previous_key_and_fails_alike(
    tmp_path: Path,
) -> None:
    import base64
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from tolem.payments.cryptogram import CryptogramError, decrypt

    def pem(name: str, bits: int = 2048) -> Path:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        path = tmp_path / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    old, older = pem("old.pem", 3072), pem("older.pem")
    settings = Settings(
        data_dir=tmp_path, rsa_previous_key_files=f"{old}, {older},{old}"
    )  # a repeated file counts once
    keyring = load_keyring(settings)
    assert len(keyring.rsa_private) == 3
    current, *previous = keyring.rsa_private
    assert keyring.public_pem == current.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def made_with(key: rsa.RSAPrivateKey, plain: bytes) -> str:
        return base64.b64encode(key.public_key().encrypt(plain, padding.PKCS1v15())).decode()

    card = json.dumps({"hpan": "4405639704015096", "expDate": "0125", "cvc": "815",
                       "terminalId": "t-1"}).encode()  # fmt: skip
    for key in keyring.rsa_private:  # any size: 3072 and 2048 side by side
        opened, terminal = decrypt(keyring.rsa_private, made_with(key, card))
        assert (opened.pan, terminal) == ("4405639704015096", "t-1")
    assert decrypt(current, made_with(current, card))[1] == "t-1"  # one key still works
    for key in previous:  # the old keys retired
        with pytest.raises(CryptogramError, match="does not decrypt"):
            decrypt(current, made_with(key, card))

    # Unknown key, wrong length, noise: one message, whichever key was tried.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    messages = set()
    for text in (
        made_with(stranger, card),
        base64.b64encode(b"\x00" * 100).decode(),
        base64.b64encode(b"\x01" * 256).decode(),
    ):
        with pytest.raises(CryptogramError) as failure:
            decrypt(keyring.rsa_private, text)
        messages.add(str(failure.value))
    assert len(messages) == 1 and messages.pop().startswith("cryptogram does not decrypt")
    with pytest.raises(CryptogramError, match="JSON object"):
        decrypt(keyring.rsa_private, made_with(previous[1], b"[1, 2]"))


def test_weak_keys_are_named() -> None:
    import os

    from tolem.keys import weakness

    assert weakness(os.urandom(32)) == ""
    assert "only 1 different" in weakness(bytes(32))
    assert "only 2 different" in weakness(b"\xab\xcd" * 16)
    assert "is text" in weakness(b"correct horse battery staple 123")


def test_previous_card_keys_open_and_the_current_one_seals(tmp_path: Path) -> None:
    import base64
    import os

    from tolem.cards.vault import CardVault, key_id
    from tolem.notifications import signing
    from tolem.processor.base import Card

    old, new = os.urandom(32), os.urandom(32)
    b64 = base64.b64encode
    keyring = load_keyring(
        Settings(
            data_dir=tmp_path,
            card_key=b64(new).decode(),
            card_previous_keys=f"{b64(old).decode()},{b64(new).decode()}",  # current: dropped
        )
    )
    assert keyring.card_keys == (new, old)
    sealed = CardVault(old).seal(Card("4405639704015096", 1, 2030, ""), bound_to="c1")
    vault = CardVault(keyring.card_key, retired=keyring.card_previous)
    assert vault.open(sealed, bound_to="c1").pan == "4405639704015096"
    assert vault.rewrap(sealed, bound_to="c1").key_id == key_id(new)

    secret = signing.new_secret()
    under_old = signing.seal(old, "m1", secret)
    assert signing.unseal(keyring.card_keys, "m1", under_old) == secret
    resealed = signing.reseal(keyring.card_keys, "m1", under_old)
    assert resealed is not None and signing.unseal(new, "m1", resealed) == secret
    assert signing.reseal(keyring.card_keys, "m1", resealed) is None  # already current
    with pytest.raises(signing.SigningSecretError):
        signing.unseal(new, "m1", under_old)
    with pytest.raises(KeyConfigError, match=r"TOLEM_CARD_PREVIOUS_KEYS \(key 1\)"):
        load_keyring(Settings(data_dir=tmp_path, card_previous_keys="bm90IDMyIGJ5dGVz"))
