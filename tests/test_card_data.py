"""No full PAN and no CVC in the database or the logs, after real payments.

Pays with every published test card, trigger cards and a plain valid card through a
real gateway, by cryptopay (saving the card) and on the hosted page (and a card
verification there), then looks for every PAN and CVC used: in the raw SQLite files
(database and WAL) or a ``pg_dump`` of PostgreSQL, in every column of every row, and in
the gateway's captured log.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.payform_support import order, submit
from tests.support import TEST_CARDS, Gateway, pay, query
from tolem.processor.cards import trigger_pan

EXTRA_CARDS = [
    (trigger_pan(484), "1230", "999", 484),
    (trigger_pan(1654), "0699", "000", 1654),
    ("4111111111111111", "1239", "737", 0),  # not a listed card: Luhn, expiry, CVC, approve
    ("5555555555554444", "1139", "73", 0),  # CVC sent as a number that lost its leading 0
]


def _dump(gateway: Gateway, tmp_path: Path) -> bytes:
    url = sa.make_url(gateway.database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        return b"".join(
            Path(url.database + suffix).read_bytes()
            for suffix in ("", "-wal", "-shm")
            if Path(url.database + suffix).exists()
        )
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.fail("pg_dump is needed to scan the PostgreSQL database")
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    out = tmp_path / "dump.sql"
    subprocess.run([pg_dump, "--no-owner", "-f", str(out), libpq], check=True)
    return out.read_bytes()


def test_no_pan_or_cvc_at_rest_or_in_logs(gateway: Gateway, tmp_path: Path) -> None:
    cards = TEST_CARDS + EXTRA_CARDS
    with gateway.client() as client:
        for pan, exp, cvc, expected in cards:
            response = pay(gateway, client, card=(pan, exp, cvc), cardSave=True)
            assert response.json()["code"] == expected, (pan, response.text)
            # The same card typed on the hosted page, which posts it in a form body.
            page = order(gateway, client, cardSave=True)
            typed = (pan, f"{exp[:2]}/{exp[2:]}", cvc.zfill(3 if len(cvc) < 4 else 4))
            assert submit(client, page.params, typed).status_code == 303, pan
        verification = order(
            gateway, client, amount=0, currency="USD", paymentType="cardVerification"
        )
        assert submit(client, verification.params).status_code == 303
    saved = query(gateway.database_url, "SELECT count(*) AS n FROM saved_cards")
    assert saved[0].n >= 6  # the scan below covers sealed cards, not an empty table

    # Raw bytes: a PAN is long enough that any hit is a real leak.
    raw = _dump(gateway, tmp_path)
    log = gateway.log_text().encode()
    for pan, *_ in cards:
        assert pan.encode() not in raw, f"PAN {pan[:6]}… stored in clear"
        assert pan.encode() not in log, f"PAN {pan[:6]}… logged"
    for marker in (b'"hpan"', b'"cvc"', b'"expDate"'):
        assert marker not in raw and marker not in log, marker

    # Every value of every row: a three-digit CVC could hide inside an RRN, so compare
    # whole values, and look for the PAN inside each of them.
    cvcs = {cvc for *_, cvc, _ in cards}
    engine = sa.create_engine(gateway.database_url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for row in conn.execute(table.select()):
                    for column, value in zip(table.columns, row, strict=True):
                        text = str(value)
                        assert text not in cvcs or column.name in _NUMERIC_COLUMNS, (
                            f"{table.name}.{column.name} holds a CVC"
                        )
                        for pan, *_ in cards:
                            assert pan not in text, f"{table.name}.{column.name} holds a PAN"
    finally:
        engine.dispose()

    # And what is kept instead: the mask and a keyed fingerprint.
    masks = _column(gateway, "card_mask")
    assert "440563...5096" in masks and "411111...1111" in masks
    fingerprints = _column(gateway, "card_fingerprint")
    assert all(len(f) == 64 for f in fingerprints if f)


# Columns that hold numbers a CVC may coincide with (amounts, reason codes, ids).
_NUMERIC_COLUMNS = {"amount", "amount_charged", "amount_refunded", "reason_code", "id"}


def _column(gateway: Gateway, name: str) -> set[str]:
    return {r[0] for r in query(gateway.database_url, f"SELECT {name} FROM transactions")}
