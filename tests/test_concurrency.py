"""Concurrent payments of one invoice: exactly one succeeds, on every backend."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support import Gateway, cryptopay, new_invoice, payment_body, query, start_gateway, token

PARALLEL = 50


def test_fifty_parallel_payments_of_one_invoice_make_one_payment(
    database_url: str, tmp_path: Path
) -> None:
    # Two worker processes, so the race crosses processes as well as threads.
    with start_gateway(tmp_path, database_url, workers=2) as gw:
        invoice = new_invoice()
        with gw.client() as client:
            tok = token(client, invoice=invoice)["access_token"]
        # Each request carries its own freshly encrypted cryptogram, as separate shops would.
        bodies = [payment_body(gw, invoice) for _ in range(PARALLEL)]
        limits = httpx.Limits(max_connections=PARALLEL, max_keepalive_connections=PARALLEL)
        with gw.client(limits=limits) as client, ThreadPoolExecutor(PARALLEL) as pool:
            responses = list(pool.map(lambda body: cryptopay(client, tok, body), bodies))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 400: PARALLEL - 1}, statuses
    for response in responses:
        if response.status_code == 400:
            assert "already used" in response.json()["message"]
    winner = next(r.json() for r in responses if r.status_code == 200)

    rows = query(
        database_url, "SELECT id, status FROM transactions WHERE invoice_id = :i", i=invoice
    )
    [(ledger,)] = query(
        database_url, "SELECT count(*) FROM simulator_ledger WHERE reference = :r", r=winner["id"]
    )
    assert [(r.id, r.status) for r in rows] == [(winner["id"], "AUTH")]
    assert ledger == 1


def test_invoices_sharing_last_six_digits_race_to_one_payment(gateway: Gateway) -> None:
    """Different invoices with the same last six digits are the same order to ePay."""
    tail = new_invoice(6)
    invoices = [prefix + tail for prefix in ("", "1", "22", "333", "4444", "55555")]
    with gateway.client() as client:
        tokens = [token(client, invoice=inv)["access_token"] for inv in invoices]
        bodies = [payment_body(gateway, inv) for inv in invoices]
        with ThreadPoolExecutor(len(invoices)) as pool:
            responses = list(
                pool.map(lambda pair: cryptopay(client, *pair), zip(tokens, bodies, strict=True))
            )
    assert sorted(r.status_code for r in responses) == [200] + [400] * (len(invoices) - 1)
