"""cardSave on cryptopay: the card of a successful payment is saved, sealed, and named."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests import secure3d_support as s3d
from tests.support import (
    TERMINAL,
    Gateway,
    cryptopay,
    new_invoice,
    pay,
    payment_body,
    query,
    start_gateway,
    token,
)
from tolem.cards.vault import CardVault, SealedCard

VISA = ("4405639704015096", "0125", "815")
DECLINED = ("5578342710750560", "0920", "254")
#: Payments of one customer saving one card at once, and how many times.
PARALLEL_SAVES = 10
SAVE_ROUNDS = 4


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


def _card_payment(gw: Gateway, client: httpx.Client, card_id: Any, account: str) -> httpx.Response:
    invoice = new_invoice()
    tok = token(client, invoice=invoice)["access_token"]
    body = {
        "amount": 100,
        "currency": "KZT",
        "name": "JON JONSON",
        "terminalId": TERMINAL,
        "invoiceId": invoice,
        "description": "repeat order",
        "accountId": account,
        "language": "rus",
        "paymentType": "cardId",
        "cardId": {"id": card_id},
        "postLink": "https://testmerchant/order/2",
    }
    return client.post(
        "/payments/cards/auth", json=body, headers={"Authorization": f"Bearer {tok}"}
    )


def test_pay_with_a_saved_card_list_it_and_deactivate_it(gateway: Gateway) -> None:
    with gateway.client() as client:
        saved = pay(gateway, client, card=VISA, cardSave=True, accountId="repeat-1")
        card_id = saved.json()["cardID"]

        again = _card_payment(gateway, client, card_id, "repeat-1")  # no CVC needed
        assert again.status_code == 200, again.text
        assert (again.json()["status"], again.json()["cardID"], again.json()["cardMask"]) == (
            "AUTH",
            card_id,
            "440563...5096",
        )
        service = {"Authorization": f"Bearer {token(client)['access_token']}"}
        listed = client.get("/cards/repeat-1", headers=service)
        assert listed.status_code == 200, listed.text
        [view] = listed.json()
        assert (view["ID"], view["CardMask"], view["AccountID"], view["PaymentAvailable"]) == (
            card_id,
            "440563...5096",
            "repeat-1",
            True,
        )
        assert set(view) == {
            "ID", "TransactionId", "MerchantID", "CardHash", "CardMask", "PayerName",
            "Reference", "IntReference", "Token", "Terminal", "CreatedDate",
            "PaymentAvailable", "AccountID",
        }  # fmt: skip
        # Another customer's account cannot use it.
        other = _card_payment(gateway, client, card_id, "someone-else")
        assert (other.status_code, other.json()["code"]) == (400, 1373)

        done = client.post(f"/card/deactivate/{card_id}", headers=service)
        assert done.json() == {"status": "card successfully deactivated"}
        assert client.get("/cards/repeat-1", headers=service).json()["code"] == 1373
        after = _card_payment(gateway, client, card_id, "repeat-1")
        assert (after.status_code, after.json()["code"]) == (400, 1373)
        again_off = client.post(f"/card/deactivate/{card_id}", headers=service)
        assert again_off.status_code == 400
    rows = query(
        gateway.database_url, "SELECT state, sealed FROM saved_cards WHERE id = :i", i=card_id
    )
    assert [(r.state, r.sealed) for r in rows] == [("deactivated", "")]


def test_a_saved_3ds_card_pays_without_a_challenge_unless_the_terminal_demands_it(
    gateway: Gateway,
) -> None:
    with gateway.client() as client:
        pending = s3d.start(gateway, client, cardSave=True, accountId="repeat-3ds")
        pa_res, md = s3d.pass_acs(client, pending)
        card_id = s3d.confirm(client, pending.token, pending.id, pa_res, md).json()
        rows = query(
            gateway.database_url, "SELECT card_id FROM transactions WHERE id = :t", t=pending.id
        )
        paid = _card_payment(gateway, client, rows[0].card_id, "repeat-3ds")
    assert card_id["status"] == "AUTH"
    assert paid.status_code == 200 and paid.json()["secure3D"] is None, paid.text


def test_saved_card_calls_are_scoped_and_answer_bad_input(gateway: Gateway) -> None:
    with gateway.client() as client:
        service = {"Authorization": f"Bearer {token(client)['access_token']}"}
        for path in ("/cards/nobody", "/cards/a%00b"):
            answer = client.get(path, headers=service)
            assert (answer.status_code, answer.json()["code"]) == (400, 1373)
        assert client.post("/card/deactivate/a%00b", headers=service).status_code == 400
        unknown = _card_payment(gateway, client, "00000000-0000-0000-0000-000000000000", "x")
        assert unknown.json()["code"] == 1373
        missing = _card_payment(gateway, client, None, "x")
        assert missing.status_code == 400 and "cardId" in missing.json()["message"]
        assert client.get("/cards/nobody").status_code == 401


def test_cards_need_a_service_token_and_the_customers_account(gateway: Gateway) -> None:
    with gateway.client() as client:
        saved = pay(gateway, client, card=VISA, cardSave=True, accountId="owner-7")
        card_id = saved.json()["cardID"]
        browser = {
            "Authorization": f"Bearer {token(client, invoice=new_invoice())['access_token']}"
        }
        assert client.get("/cards/owner-7", headers=browser).status_code == 401
        assert client.post(f"/card/deactivate/{card_id}", headers=browser).status_code == 401
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        no_account = client.post(
            "/payments/cards/auth",
            json={
                "amount": 100, "currency": "KZT", "name": "X", "invoiceId": invoice,
                "description": "d", "paymentType": "cardId", "cardId": {"id": card_id},
            },
            headers={"Authorization": f"Bearer {tok}"},
        )  # fmt: skip
        assert (no_account.status_code, no_account.json()["code"]) == (400, 477)


def test_one_customer_saving_one_card_at_once_keeps_one_card(
    database_url: str, tmp_path: Path
) -> None:
    """Orders of one customer paid at once with one card, each saving it, through three
    server processes (the scale-out issue found it): one cardID, one saved card."""
    with start_gateway(tmp_path, database_url, workers=3) as gw:
        for _ in range(SAVE_ROUNDS):
            account = f"at-once-{new_invoice()}"
            pairs = []
            with gw.client() as client:
                for _ in range(PARALLEL_SAVES):
                    invoice = new_invoice()
                    tok = token(client, invoice=invoice)["access_token"]
                    body = payment_body(gw, invoice, accountId=account, cardSave=True)
                    pairs.append((tok, body))
            limits = httpx.Limits(max_connections=PARALLEL_SAVES)
            with gw.client(limits=limits) as racing, ThreadPoolExecutor(PARALLEL_SAVES) as pool:
                answers = list(pool.map(lambda pair: cryptopay(racing, *pair), pairs))
            assert [a.status_code for a in answers] == [200] * PARALLEL_SAVES, [
                a.text for a in answers
            ]
            card_ids = {a.json()["cardID"] for a in answers}
            active = query(
                database_url,
                "SELECT id FROM saved_cards WHERE account_id = :a AND state = 'active'",
                a=account,
            )
            assert (len(card_ids), len(active)) == (1, 1), (card_ids, active)
            assert card_ids == {active[0].id}
            # The cards the other payments held were dropped, none left pending.
            [(held,)] = query(
                database_url, "SELECT count(*) FROM saved_cards WHERE account_id = :a", a=account
            )
            assert held == 1
