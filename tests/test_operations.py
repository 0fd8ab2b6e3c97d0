"""Charge, cancel and refund over HTTP (EPAY.md sections 8 and 11), on both databases."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.support import Gateway, cryptopay, new_invoice, payment_body, query, token


def _paid(gw: Gateway, client: httpx.Client, amount: Any = 1000) -> str:
    invoice = new_invoice()
    tok = token(client, invoice=invoice, amount=amount)["access_token"]
    answer = cryptopay(client, tok, payment_body(gw, invoice, amount=amount))
    assert answer.json()["status"] == "AUTH", answer.text
    return str(answer.json()["id"])


def _service(client: httpx.Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(client)['access_token']}"}


def _operate(
    client: httpx.Client, headers: dict[str, str], tx_id: str, kind: str, **kwargs: Any
) -> httpx.Response:
    return client.post(f"/operation/{tx_id}/{kind}", headers=headers, **kwargs)


def _money(minor_units: Any) -> Decimal:
    """Amounts read from outside the gateway are integer minor units (tiyn)."""
    return Decimal(int(minor_units)) / 100


def _row(gw: Gateway, tx_id: str) -> Any:
    [row] = query(
        gw.database_url,
        "SELECT status, amount_charged, amount_refunded, amount_refund_pending, operation_lock"
        " FROM transactions WHERE id = :t",
        t=tx_id,
    )
    return row


def _refused(response: httpx.Response, message: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 100
    assert message in response.json()["message"], response.text


def test_charge_partial_then_refunds_until_refund(gateway: Gateway) -> None:
    with gateway.client() as client:
        headers = _service(client)
        tx = _paid(gateway, client)
        charged = _operate(client, headers, tx, "charge", json={"amount": 800})
        assert charged.status_code == 200, charged.text
        assert (charged.json()["status"], charged.json()["amountCharged"]) == ("CHARGE", 800)
        first = _operate(
            client, headers, tx, "refund", params={"amount": "300", "externalID": "r-1"}
        )
        assert (first.json()["status"], first.json()["amountRefunded"]) == ("CHARGE", 300)
        _refused(_operate(client, headers, tx, "refund", params={"amount": "600"}), "exceed")
        _refused(_operate(client, headers, tx, "refund", params={"amount": "5"}), "at least 10")
        rest = _operate(client, headers, tx, "refund")  # no amount: what is left
        assert (rest.json()["status"], rest.json()["amount"]) == ("REFUND", 500)
        _refused(_operate(client, headers, tx, "refund"), "needs status CHARGE")
        _refused(_operate(client, headers, tx, "cancel"), "needs status AUTH")
    row = _row(gateway, tx)
    assert (row.status, _money(row.amount_charged), _money(row.amount_refunded)) == (
        "REFUND",
        Decimal("800.00"),
        Decimal("800.00"),
    )
    assert _money(row.amount_refund_pending) == 0 and row.operation_lock is None
    kinds = query(
        gateway.database_url,
        "SELECT kind, amount, external_id, state FROM operations WHERE transaction_id = :t"
        " ORDER BY created_at",
        t=tx,
    )
    assert [(k.kind, _money(k.amount), k.external_id, k.state) for k in kinds] == [
        ("charge", Decimal("800.00"), "", "done"),
        ("refund", Decimal("300.00"), "r-1", "done"),
        ("refund", Decimal("500.00"), "", "done"),
    ]
    # Each operation writes its postLink with the payment's new state.
    events = query(
        gateway.database_url,
        "SELECT event FROM notifications WHERE transaction_id = :t ORDER BY created_at",
        t=tx,
    )
    assert [e.event for e in events] == ["payment", "charge", "refund", "refund"]


def test_cancel_releases_an_auth_and_nothing_follows(gateway: Gateway) -> None:
    with gateway.client() as client:
        headers = _service(client)
        tx = _paid(gateway, client)
        _refused(_operate(client, headers, tx, "cancel", params={"amount": "10"}), "no amount")
        cancelled = client.post(f"/api/operation/{tx}/cancel", headers=headers)
        assert cancelled.json()["status"] == "CANCEL", cancelled.text
        _refused(_operate(client, headers, tx, "charge"), "needs status AUTH")
        _refused(_operate(client, headers, tx, "refund"), "needs status CHARGE")
    assert _row(gateway, tx).status == "CANCEL"


def test_bad_amounts_and_bodies_are_refused(gateway: Gateway) -> None:
    with gateway.client() as client:
        headers = _service(client)
        tx = _paid(gateway, client)
        for amount in ("0", "-5", "1000.01", "abc", "1.001"):
            response = _operate(client, headers, tx, "charge", params={"amount": amount})
            assert response.status_code == 400 and response.json()["code"] == 100, amount
        response = client.post(
            f"/operation/{tx}/charge",
            headers=headers | {"Content-Type": "application/json"},
            content=b"[1,2",
        )
        assert response.status_code == 400 and response.json()["code"] == 100
    assert _row(gateway, tx).status == "AUTH"


def test_only_the_tokens_merchant_and_order_reach_a_transaction(gateway: Gateway) -> None:
    with gateway.client() as client:
        tx = _paid(gateway, client)
        other_order = {
            "Authorization": f"Bearer {token(client, invoice=new_invoice())['access_token']}"
        }
        _refused(_operate(client, other_order, tx, "charge"), "transaction not found")
        headers = _service(client)
        for missing in ("00000000-0000-0000-0000-000000000000", "x" * 40, "a%00b"):
            _refused(_operate(client, headers, missing, "charge"), "transaction not found")
        assert client.post(f"/operation/{tx}/charge").status_code == 401
    assert _row(gateway, tx).status == "AUTH"


@pytest.mark.parametrize("workers", [20])
def test_racing_refunds_never_exceed_the_charge(gateway: Gateway, workers: int) -> None:
    with gateway.client() as client:
        headers = _service(client)
        tx = _paid(gateway, client)
        assert _operate(client, headers, tx, "charge").status_code == 200

    def refund(_: int) -> int:
        with gateway.client() as own:
            return _operate(own, headers, tx, "refund", params={"amount": "100"}).status_code

    with ThreadPoolExecutor(workers) as pool:
        codes = list(pool.map(refund, range(workers)))
    assert sorted(codes) == [200] * 10 + [400] * (workers - 10)
    row = _row(gateway, tx)
    assert (row.status, _money(row.amount_refunded), _money(row.amount_refund_pending)) == (
        "REFUND",
        Decimal("1000.00"),
        Decimal("0.00"),
    )
    ledger = query(
        gateway.database_url,
        "SELECT count(*) AS n FROM simulator_ledger WHERE kind = 'refund' AND auth_reference = :t",
        t=tx,
    )
    assert ledger[0].n == 10


def test_a_charge_racing_a_cancel_one_wins(gateway: Gateway) -> None:
    with gateway.client() as client:
        headers = _service(client)
        tx = _paid(gateway, client)

    def operate(kind: str) -> tuple[str, int]:
        with gateway.client() as own:
            return kind, _operate(own, headers, tx, kind).status_code

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(operate, ["charge", "cancel"] * 10))
    winners = [kind for kind, code in results if code == 200]
    assert len(winners) == 1
    assert _row(gateway, tx).status == {"charge": "CHARGE", "cancel": "CANCEL"}[winners[0]]
    done = query(
        gateway.database_url,
        "SELECT count(*) AS n FROM operations WHERE transaction_id = :t AND state = 'done'",
        t=tx,
    )
    assert done[0].n == 1


def test_racing_charges_charge_once_and_never_more_than_authorised(gateway: Gateway) -> None:
    with gateway.client() as client:
        headers = _service(client)
        tx = _paid(gateway, client)

    def charge(i: int) -> int:
        with gateway.client() as own:
            amount = str(500 + 50 * (i % 11))  # 500 … 1000, all within the authorisation
            return _operate(own, headers, tx, "charge", params={"amount": amount}).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(charge, range(20)))
    assert codes.count(200) == 1 and codes.count(400) == 19
    row = _row(gateway, tx)
    assert row.status == "CHARGE" and Decimal("500") <= _money(row.amount_charged) <= 1000
    captures = query(
        gateway.database_url,
        "SELECT count(*) AS n FROM simulator_ledger WHERE kind = 'capture' AND auth_reference = :t",
        t=tx,
    )
    assert captures[0].n == 1


def test_another_merchant_finds_neither_the_transaction_nor_its_card(gateway: Gateway) -> None:
    from tests.test_secure3d import _merchant

    with gateway.client() as client:
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        body = payment_body(gateway, invoice) | {"cardSave": True, "accountId": "owner-1"}
        paid = cryptopay(client, tok, body).json()
        creds = _merchant(gateway)
        stranger = token(
            client,
            terminal=creds["terminalId"],
            client_id=creds["clientId"],
            client_secret=creds["clientSecret"],
        )["access_token"]
        headers = {"Authorization": f"Bearer {stranger}"}
        for kind in ("charge", "cancel", "refund"):
            _refused(_operate(client, headers, paid["id"], kind), "transaction not found")
        assert client.get("/cards/owner-1", headers=headers).json()["code"] == 1373
        gone = client.post(f"/card/deactivate/{paid['cardID']}", headers=headers)
        assert gone.status_code == 400
        legacy = client.get(f"/operation/{invoice}", headers=headers)
        assert (legacy.status_code, legacy.json()["code"]) == (400, "102")
    assert _row(gateway, paid["id"]).status == "AUTH"
    rows = query(
        gateway.database_url, "SELECT state FROM saved_cards WHERE id = :i", i=paid["cardID"]
    )
    assert [r.state for r in rows] == ["active"]
