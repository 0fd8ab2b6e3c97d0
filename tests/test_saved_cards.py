"""cardSave on cryptopay: the card of a successful payment is saved, sealed, and named."""

from __future__ import annotations

import base64

from tests import secure3d_support as s3d
from tests.support import Gateway, pay, query
from tolem.cards.vault import CardVault, SealedCard

VISA = ("4405639704015096", "0125", "815")
DECLINED = ("5578342710750560", "0920", "254")


def _saved(gw: Gateway, card_id: str) -> list[tuple[str, str, str, str]]:
    rows = query(
        gw.database_url,
        "SELECT state, card_mask, account_id, transaction_id FROM saved_cards WHERE id = :i",
        i=card_id,
    )
    return [(r.state, r.card_mask, r.account_id, r.transaction_id) for r in rows]


def test_an_approved_payment_saves_its_card_and_returns_its_id(gateway: Gateway) -> None:
    with gateway.client() as client:
        first = pay(gateway, client, card=VISA, cardSave=True, accountId="saver-1")
        assert first.status_code == 200, first.text
        card_id = first.json()["cardID"]
        assert len(card_id) == 36
        assert _saved(gateway, card_id) == [
            ("active", "440563...5096", "saver-1", first.json()["id"])
        ]

        # The same customer saving the same card again keeps the card id it has.
        again = pay(gateway, client, card=VISA, cardSave=True, accountId="saver-1")
        assert again.json()["cardID"] == card_id
        # Another customer gets a card of their own.
        other = pay(gateway, client, card=VISA, cardSave=True, accountId="saver-2")
        assert other.json()["cardID"] not in ("", card_id)
        # Without cardSave nothing is saved.
        plain = pay(gateway, client, card=VISA, cardSave=False, accountId="saver-3")
        assert plain.json()["cardID"] == ""
    assert (
        query(gateway.database_url, "SELECT id FROM saved_cards WHERE account_id = 'saver-3'") == []
    )
    counted = query(
        gateway.database_url,
        "SELECT count(*) AS n FROM saved_cards WHERE account_id = 'saver-1'",
    )
    assert counted[0].n == 1  # the duplicate's held card was dropped


def test_a_declined_payment_keeps_nothing(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = pay(gateway, client, card=DECLINED, cardSave=True, accountId="saver-4")
    assert response.status_code == 400 and response.json()["code"] == 484
    tx_id = response.json()["id"]
    assert (
        query(gateway.database_url, "SELECT id FROM saved_cards WHERE transaction_id = :t", t=tx_id)
        == []
    )
    rows = query(gateway.database_url, "SELECT card_id FROM transactions WHERE id = :t", t=tx_id)
    assert [r.card_id for r in rows] == [""]


def test_a_3ds_payment_saves_its_card_when_confirmed(gateway: Gateway) -> None:
    with gateway.client() as client:
        pending = s3d.start(gateway, client, cardSave=True, accountId="saver-5")
        held = query(
            gateway.database_url,
            "SELECT state FROM saved_cards WHERE transaction_id = :t",
            t=pending.id,
        )
        assert [r.state for r in held] == ["pending"]  # sealed now, kept only if approved
        pa_res, md = s3d.pass_acs(client, pending)
        confirmed = s3d.confirm(client, pending.token, pending.id, pa_res, md)
    assert confirmed.json()["status"] == "AUTH"
    rows = query(
        gateway.database_url,
        "SELECT t.card_id, c.state, c.card_mask FROM transactions t "
        "JOIN saved_cards c ON c.id = t.card_id WHERE t.id = :t",
        t=pending.id,
    )
    assert [(r.state, r.card_mask) for r in rows] == [("active", s3d.VISA_3DS[0][:6] + "...0006")]


def test_the_sealed_card_opens_with_the_gateways_card_key_only(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = pay(gateway, client, card=VISA, cardSave=True, accountId="saver-6")
    card_id = response.json()["cardID"]
    row = query(
        gateway.database_url, "SELECT key_id, sealed FROM saved_cards WHERE id = :i", i=card_id
    )[0]
    key = base64.b64decode((gateway.data_dir / "keys" / "card.key").read_text().strip())
    vault = CardVault(key)
    assert row.key_id == vault.key_id
    card = vault.open(SealedCard(row.key_id, row.sealed), bound_to=card_id)
    assert (card.pan, card.exp_month, card.exp_year, card.cvc) == (VISA[0], 1, 2025, "")
    assert (
        VISA[0] not in row.sealed and base64.b64encode(VISA[0].encode()).decode() not in row.sealed
    )
