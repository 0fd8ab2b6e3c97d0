"""The card vault: round trip, no card data in the clear, tamper evidence, key rotation."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tolem.cards.vault import CardVault, SealedCard, VaultError, key_id
from tolem.processor.base import Card

KEY_A = bytes(range(32))
KEY_B = bytes(32)
KEY_A_ID = "ec3b98a82d23fd5d"  # HMAC-SHA256(KEY_A, b"tolem-card-key-id")[:8].hex(), pinned
KEY_B_ID = "761be9294a9e6899"
CARD = Card(pan="4405639704015096", exp_month=1, exp_year=2030, cvc="815")
ROW = "card-7f3c"
BLOB_CHARS = 204  # 153 bytes, whatever the PAN's length


def _sealed(vault: CardVault | None = None, card: Card = CARD) -> SealedCard:
    return (vault or CardVault(KEY_A)).seal(card, bound_to=ROW)


def _with_raw(sealed: SealedCard, raw: bytes) -> SealedCard:
    return SealedCard(sealed.key_id, base64.b64encode(raw).decode("ascii"))


def _quiet(exc: BaseException) -> bool:
    """No chained exception travels with a VaultError (a JSON error would carry the PAN)."""
    return exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def _fields(card: Card) -> tuple[str, int, int, str]:
    return (card.pan, card.exp_month, card.exp_year, card.cvc)


def test_round_trip_drops_the_cvc() -> None:
    vault = CardVault(KEY_A)
    sealed = vault.seal(CARD, bound_to=ROW)
    assert sealed.key_id == KEY_A_ID
    assert len(sealed.blob) == BLOB_CHARS
    assert sealed.blob.isascii()
    assert _fields(vault.open(sealed, bound_to=ROW)) == ("4405639704015096", 1, 2030, "")


@pytest.mark.parametrize(
    ("pan", "month", "year"),
    [("123456789012", 12, 2099), ("5555555555554444", 6, 2031), ("6" * 19, 10, 9999)],
)
def test_every_pan_length_round_trips_to_the_same_blob_length(
    pan: str, month: int, year: int
) -> None:
    vault = CardVault(KEY_A)
    sealed = vault.seal(Card(pan, month, year, "123"), bound_to=ROW)
    assert len(sealed.blob) == BLOB_CHARS  # the blob does not tell the PAN's length
    assert _fields(vault.open(sealed, bound_to=ROW)) == (pan, month, year, "")


def test_layout_decoded_independently_holds_no_cvc() -> None:
    """Open a blob by hand from the documented layout: the plaintext has no CVC."""
    raw = base64.b64decode(_sealed().blob)
    assert len(raw) == 153
    assert raw[0] == 1
    key_aad = b"tolem-card-vault:key:\x01:" + ROW.encode()
    card_aad = b"tolem-card-vault:card:\x01:" + ROW.encode()
    data_key = AESGCM(KEY_A).decrypt(raw[1:13], raw[13:61], key_aad)
    assert len(data_key) == 32
    plain = AESGCM(data_key).decrypt(raw[61:73], raw[73:], card_aad)
    expected = b'{"pan":"4405639704015096","exp_month":1,"exp_year":2030}'
    assert plain == expected + b" " * (64 - len(expected))
    assert b"815" not in plain
    assert json.loads(plain) == {"pan": "4405639704015096", "exp_month": 1, "exp_year": 2030}


def _by_hand(plain: bytes, bound_to: str = "row-9") -> SealedCard:
    """A blob built from the documented layout, with fixed nonces and data key."""
    data_key = bytes(range(100, 132))
    card_nonce, wrap_nonce = b"\x11" * 12, b"\x22" * 12
    card_aad = b"tolem-card-vault:card:\x01:" + bound_to.encode()
    key_aad = b"tolem-card-vault:key:\x01:" + bound_to.encode()
    raw = (
        b"\x01"
        + wrap_nonce
        + AESGCM(KEY_A).encrypt(wrap_nonce, data_key, key_aad)
        + card_nonce
        + AESGCM(data_key).encrypt(card_nonce, plain, card_aad)
    )
    return SealedCard(KEY_A_ID, base64.b64encode(raw).decode("ascii"))


def test_a_blob_built_by_hand_opens() -> None:
    """The format is pinned: a blob built from the documented layout opens."""
    plain = b'{"pan":"4111111111111111","exp_month":12,"exp_year":2039}'.ljust(64)
    card = CardVault(KEY_A).open(_by_hand(plain), bound_to="row-9")
    assert _fields(card) == ("4111111111111111", 12, 2039, "")


@pytest.mark.parametrize(
    "plain",
    [
        b'{"pan":"4111111111111111","exp_month":12,"exp_year":2039',  # not JSON
        b'{"pan":"4111111111111111","exp_month":12}',
        b'{"pan":"4111111111111111","exp_month":13,"exp_year":2039}',
        b'{"pan":"4111111111111111","exp_month":true,"exp_year":2039}',
        b'{"pan":4111111111111111,"exp_month":12,"exp_year":2039}',
        b'["4111111111111111",12,2039]',
        b"\xff4111111111111111",
    ],
)
def test_authentic_but_invalid_plaintext_is_refused_quietly(plain: bytes) -> None:
    vault = CardVault(KEY_A)
    for sealed in (_by_hand(plain.ljust(64)), _by_hand(plain)):
        for call in (vault.open, vault.rewrap):
            with pytest.raises(VaultError) as caught:
                call(sealed, bound_to="row-9")
            assert "4111" not in str(caught.value)
            assert _quiet(caught.value)


def test_no_card_data_in_the_sealed_card() -> None:
    sealed = _sealed()
    raw = base64.b64decode(sealed.blob)
    pan = CARD.pan
    b64_pan = base64.b64encode(pan.encode()).decode()
    run = pan[:6] + pan[-4:]
    for text in (sealed.blob, sealed.key_id, repr(sealed)):
        for needle in (pan, run, b64_pan, pan[:6] + "..." + pan[-4:], CARD.cvc * 2):
            assert needle not in text
    for needle_b in (pan.encode(), run.encode(), b64_pan.encode(), b"4405639704"):
        assert needle_b not in raw


def test_two_seals_of_the_same_card_differ() -> None:
    vault = CardVault(KEY_A)
    first, second = vault.seal(CARD, bound_to=ROW), vault.seal(CARD, bound_to=ROW)
    assert first.key_id == second.key_id == KEY_A_ID
    assert first.blob != second.blob
    raw1, raw2 = base64.b64decode(first.blob), base64.b64decode(second.blob)
    assert raw1[1:13] != raw2[1:13]  # fresh wrap nonce
    assert raw1[13:61] != raw2[13:61]  # fresh data key
    assert raw1[61:73] != raw2[61:73]  # fresh card nonce


@pytest.mark.parametrize(
    "other", ["card-7f3d", "card-7f3c ", "", "CARD-7F3C", "card-7f3", "\ud800"]
)
def test_wrong_bound_to_does_not_open(other: str) -> None:
    vault = CardVault(KEY_A)
    with pytest.raises(VaultError) as caught:
        vault.open(_sealed(vault), bound_to=other)
    assert type(caught.value) is VaultError
    with pytest.raises(VaultError):
        vault.rewrap(_sealed(vault), bound_to=other)


def test_card_part_moved_onto_another_row_does_not_open() -> None:
    """A valid wrapped key for row 2 spliced with row 1's card part: the card layer refuses."""
    vault = CardVault(KEY_A)
    one = base64.b64decode(vault.seal(CARD, bound_to="row-1").blob)
    two = base64.b64decode(vault.seal(CARD, bound_to="row-2").blob)
    spliced = _with_raw(_sealed(vault), two[:61] + one[61:])
    with pytest.raises(VaultError, match="altered or belongs to another id"):
        vault.open(spliced, bound_to="row-2")


def test_every_single_byte_flip_is_refused() -> None:
    vault = CardVault(KEY_A)
    sealed = _sealed(vault)
    raw = base64.b64decode(sealed.blob)
    for index in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(raw)
            tampered[index] ^= mask
            with pytest.raises(VaultError) as caught:
                vault.open(_with_raw(sealed, bytes(tampered)), bound_to=ROW)
            assert CARD.pan not in str(caught.value)
            assert _quiet(caught.value)
            with pytest.raises(VaultError):
                vault.rewrap(_with_raw(sealed, bytes(tampered)), bound_to=ROW)
    assert _fields(vault.open(sealed, bound_to=ROW)) == ("4405639704015096", 1, 2030, "")


def test_truncated_or_extended_blobs_are_refused() -> None:
    vault = CardVault(KEY_A)
    sealed = _sealed(vault)
    raw = base64.b64decode(sealed.blob)
    variants = [raw[:n] for n in range(len(raw))] + [raw[n:] for n in range(1, len(raw))]
    variants += [raw + b"\x00", raw + raw[-3:], raw[:-3] + raw[-3:][::-1]]
    for variant in variants:
        with pytest.raises(VaultError):
            vault.open(_with_raw(sealed, variant), bound_to=ROW)
    for chars in range(len(sealed.blob)):  # text truncations, padding or not
        with pytest.raises(VaultError):
            vault.open(SealedCard(KEY_A_ID, sealed.blob[:chars]), bound_to=ROW)


def test_garbage_blobs_are_refused() -> None:
    vault = CardVault(KEY_A)
    good = _sealed(vault).blob
    raw = base64.b64decode(good)
    garbage = [
        "",
        "not base64 at all!",
        "=" * BLOB_CHARS,
        "A" * BLOB_CHARS,  # right length, version 0
        "П" * BLOB_CHARS,  # right length, not ASCII
        "\x00" * BLOB_CHARS,
        good[:-1] + "=",
        good[:100] + "=" + good[101:],
        good[:100] + "\n" + good[101:],
        " " + good[1:],
        good.replace("+", "-").replace("/", "_")
        if ("+" in good or "/" in good)
        else "-" + good[1:],
        good + "\n",
        base64.b64encode(b"\x02" + raw[1:]).decode(),  # a future version
        base64.b64encode(b"\x01" + bytes(152)).decode(),
        json.dumps({"pan": CARD.pan}),
    ]
    for blob in garbage:
        with pytest.raises(VaultError) as caught:
            vault.open(SealedCard(KEY_A_ID, blob), bound_to=ROW)
        assert type(caught.value) is VaultError
        assert _quiet(caught.value)
    with pytest.raises(VaultError, match="unknown format version"):
        vault.open(_with_raw(_sealed(vault), b"\x02" + raw[1:]), bound_to=ROW)
    with pytest.raises(VaultError, match="wrong length"):
        vault.open(_with_raw(_sealed(vault), raw[:-1]), bound_to=ROW)


def test_unknown_or_malformed_key_id_is_refused() -> None:
    sealed = _sealed(CardVault(KEY_A))
    with pytest.raises(VaultError, match=f"no vault key with id {KEY_A_ID}"):
        CardVault(KEY_B).open(sealed, bound_to=ROW)
    for bad_id in ("0" * 16, KEY_A_ID.upper(), KEY_A_ID[:-1], "", "x" * 16, KEY_A_ID + "0"):
        with pytest.raises(VaultError):
            CardVault(KEY_A).open(SealedCard(bad_id, sealed.blob), bound_to=ROW)
    # The blob claims another known key: that key does not open it.
    with pytest.raises(VaultError, match="altered or belongs to another id"):
        CardVault(KEY_A, retired=[KEY_B]).open(SealedCard(KEY_B_ID, sealed.blob), bound_to=ROW)


def test_rotation_retired_key_opens_and_rewrap_moves_to_the_current_key() -> None:
    sealed_a = _sealed(CardVault(KEY_A))
    rotated = CardVault(KEY_B, retired=[KEY_A])
    assert rotated.key_id == KEY_B_ID
    assert _fields(rotated.open(sealed_a, bound_to=ROW)) == ("4405639704015096", 1, 2030, "")

    sealed_b = rotated.rewrap(sealed_a, bound_to=ROW)
    assert sealed_b.key_id == KEY_B_ID
    assert len(sealed_b.blob) == BLOB_CHARS
    raw_a, raw_b = base64.b64decode(sealed_a.blob), base64.b64decode(sealed_b.blob)
    assert raw_b[0] == raw_a[0] == 1
    assert raw_b[61:] == raw_a[61:]  # card nonce and ciphertext untouched
    assert raw_b[1:61] != raw_a[1:61]  # only the 60-byte wrapped key changed
    assert _fields(CardVault(KEY_B).open(sealed_b, bound_to=ROW)) == (
        "4405639704015096",
        1,
        2030,
        "",
    )
    with pytest.raises(VaultError, match=f"no vault key with id {KEY_B_ID}"):
        CardVault(KEY_A).open(sealed_b, bound_to=ROW)
    with pytest.raises(VaultError, match=f"no vault key with id {KEY_A_ID}"):
        CardVault(KEY_B).open(sealed_a, bound_to=ROW)
    # Rewrapping is bound too: the re-wrapped key does not open on another row.
    with pytest.raises(VaultError):
        CardVault(KEY_B).open(sealed_b, bound_to="card-other")


def test_key_id_is_stable_and_distinct() -> None:
    assert key_id(KEY_A) == key_id(bytes(range(32))) == KEY_A_ID
    assert key_id(KEY_B) == KEY_B_ID
    assert CardVault(KEY_A).key_id == KEY_A_ID
    assert CardVault(KEY_A, retired=[KEY_B]).key_id == KEY_A_ID
    assert KEY_A.hex() not in KEY_A_ID and KEY_A_ID not in KEY_A.hex()


@pytest.mark.parametrize("bad", [bytes(16), bytes(31), bytes(33), b"", bytes(64)])
def test_kek_must_be_32_bytes(bad: bytes) -> None:
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        CardVault(bad)
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        CardVault(KEY_A, retired=[bad])


def test_seal_refuses_what_it_cannot_store() -> None:
    vault = CardVault(KEY_A)
    with pytest.raises(ValueError, match="non-empty id"):
        vault.seal(CARD, bound_to="")
    bad_cards = [
        Card("4405 6397 0401 5096", 1, 2030, ""),
        Card("44056397040", 1, 2030, ""),
        Card("4" * 20, 1, 2030, ""),
        Card("４４０５６３９７０４０１５０９６", 1, 2030, ""),  # fullwidth digits  # noqa: RUF001
        Card(CARD.pan, 0, 2030, ""),
        Card(CARD.pan, 13, 2030, ""),
        Card(CARD.pan, 1, 30, ""),
    ]
    for card in bad_cards:
        with pytest.raises(ValueError) as caught:
            vault.seal(card, bound_to=ROW)
        assert CARD.pan not in str(caught.value) and "4405" not in str(caught.value)
