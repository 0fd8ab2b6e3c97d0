"""Idempotency-Key on POST, and the legacy status GET /operation/{invoiceId}."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

from tests.support import Gateway, cryptopay, new_invoice, payment_body, query, token


def _headers(client_token: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {client_token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def test_a_repeated_payment_with_its_key_replays_the_first_answer(gateway: Gateway) -> None:
    key = secrets.token_hex(8)
    with gateway.client() as client:
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        body = payment_body(gateway, invoice)
        first = client.post("/payment/cryptopay", json=body, headers=_headers(tok, key))
        again = client.post("/payment/cryptopay", json=body, headers=_headers(tok, key))
        other = dict(body, description="another order text")
        changed = client.post("/payment/cryptopay", json=other, headers=_headers(tok, key))
        # Without the key the same request is a second payment attempt: invoice taken.
        plain = cryptopay(client, tok, body)
    assert first.status_code == 200 and again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert (changed.status_code, changed.json()["code"]) == (422, 100)
    assert plain.status_code == 400 and "already used" in plain.json()["message"]
    rows = query(
        gateway.database_url, "SELECT id FROM transactions WHERE invoice_id = :i", i=invoice
    )
    assert len(rows) == 1


def test_one_key_racing_itself_runs_once(gateway: Gateway) -> None:
    key = secrets.token_hex(8)
    with gateway.client() as client:
        service = token(client)["access_token"]
        invoice = new_invoice()
        tok = token(client, invoice=invoice, amount=1000)["access_token"]
        tx = cryptopay(client, tok, payment_body(gateway, invoice, amount=1000)).json()["id"]
        assert client.post(f"/operation/{tx}/charge", headers=_headers(service)).status_code == 200

    def refund(_: int) -> int:
        with gateway.client() as own:
            return own.post(
                f"/operation/{tx}/refund", params={"amount": "100"}, headers=_headers(service, key)
            ).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(refund, range(20)))
    assert set(codes) <= {200, 409} and 200 in codes
    done = query(
        gateway.database_url,
        "SELECT count(*) AS n FROM operations WHERE transaction_id = :t AND kind = 'refund'",
        t=tx,
    )
    assert done[0].n == 1  # one execution, whatever the others were told
    with gateway.client() as client:
        replay = client.post(
            f"/operation/{tx}/refund", params={"amount": "100"}, headers=_headers(service, key)
        )
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"


def test_keys_belong_to_their_merchant_and_bad_keys_are_refused(gateway: Gateway) -> None:
    with gateway.client() as client:
        service = token(client)["access_token"]
        bad = client.post("/operation/x/charge", headers=_headers(service, "k" * 300))
        assert bad.status_code == 400
        # No token that opens: served as if there were no key (and refused as usual).
        assert (
            client.post("/operation/x/charge", headers={"Idempotency-Key": "a"}).status_code == 401
        )


def test_the_legacy_status_is_a_flat_object_whose_code_is_the_status(gateway: Gateway) -> None:
    with gateway.client() as client:
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        paid = cryptopay(client, tok, payment_body(gateway, invoice)).json()
        service = token(client)["access_token"]
        found = client.get(f"/operation/{invoice}", headers=_headers(service))
        missing = client.get(f"/operation/{new_invoice()}", headers=_headers(service))
        nul = client.get("/operation/a%00b", headers=_headers(service))
    assert found.status_code == 200, found.text
    assert (found.json()["code"], found.json()["id"], found.json()["statusName"]) == (
        "AUTH",
        paid["id"],
        "AUTH",
    )
    assert (missing.status_code, missing.json()["code"]) == (400, "102")
    assert nul.status_code == 400


def test_a_request_cut_off_before_its_body_never_runs(gateway: Gateway) -> None:
    import socket
    import time
    from urllib.parse import urlsplit

    with gateway.client() as client:
        service = token(client)["access_token"]
        invoice = new_invoice()
        tok = token(client, invoice=invoice, amount=1000)["access_token"]
        tx = cryptopay(client, tok, payment_body(gateway, invoice, amount=1000)).json()["id"]
    url = urlsplit(gateway.base_url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(
            (
                f"POST /operation/{tx}/charge HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {service}\r\nIdempotency-Key: cut-off\r\n"
                "Content-Type: application/json\r\nContent-Length: 15\r\n\r\n"
            ).encode()
        )
    time.sleep(0.5)  # the server sees the disconnect
    rows = query(gateway.database_url, "SELECT status FROM transactions WHERE id = :t", t=tx)
    assert [r.status for r in rows] == ["AUTH"]  # not charged as if no amount were sent
    with gateway.client() as client:
        retried = client.post(
            f"/operation/{tx}/charge", json={"amount": 300}, headers=_headers(service, "cut-off")
        )
    assert retried.status_code == 200 and retried.json()["amountCharged"] == 300


def test_a_key_does_not_replay_to_a_token_of_another_order(gateway: Gateway) -> None:
    key = secrets.token_hex(8)
    with gateway.client() as client:
        service = token(client)["access_token"]
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        tx = cryptopay(client, tok, payment_body(gateway, invoice)).json()["id"]
        first = client.post(f"/operation/{tx}/charge", headers=_headers(service, key))
        other = token(client, invoice=new_invoice())["access_token"]
        replay = client.post(f"/operation/{tx}/charge", headers=_headers(other, key))
    assert first.status_code == 200
    assert replay.status_code == 422 and "idempotent-replayed" not in replay.headers
