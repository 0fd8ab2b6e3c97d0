"""How fast the cabinet's transaction list is at a million rows, on PostgreSQL.

    .venv/bin/python bench/cabinet_search.py                 # fresh database, dropped after
    .venv/bin/python bench/cabinet_search.py --explain       # and the plan of every case
    .venv/bin/python bench/cabinet_search.py --keep          # keep the database (its URL is
                                                             # printed) ...
    .venv/bin/python bench/cabinet_search.py --database-url URL   # ... and time it again

It creates a database (``tolem_bench_<random>``) on the server of ``--admin-url``, builds
the schema with tolem's own migrations (tolem.db.migrate.upgrade), loads ``--rows``
transactions for one merchant and a tenth as many for a second one over 90 days (COPY),
runs ANALYZE, then times each filter the page offers: the very statement the page runs
(tolem.cabinet.web.transactions_query, from the same query parameters through
parse_filter), read through the ORM as the page reads it. It prints the median and p95
of ``--runs`` runs per case. Not a test: nothing here fails when a case is slow.
"""

from __future__ import annotations

import argparse
import io
import random
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tolem.cabinet.web import ListFilter, parse_filter, transactions_query
from tolem.db.engine import Database
from tolem.db.migrate import upgrade
from tolem.merchants.service import create_merchant
from tolem.payments.models import Transaction

DEFAULT_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DAYS = 90
END = datetime(2026, 11, 30, tzinfo=UTC)
#: Status shares, roughly a shop's: most paid, a few rare ones.
STATUSES = [
    ("CHARGE", 0.55),
    ("FAILED", 0.15),
    ("AUTH", 0.10),
    ("REFUND", 0.05),
    ("CANCEL", 0.04),
    ("NEW", 0.05),
    ("3D", 0.03),
    ("REJECT", 0.0295),
    ("VERIFIED", 0.0005),
]
COMMON_BIN = "440563"
RARE_BIN = "539545"


def _bins(rng: random.Random) -> list[str]:
    """40 BINs; the first (Halyk's) takes a quarter of the cards, the last is rare."""
    others = [f"{rng.randrange(400000, 559999)}" for _ in range(38)]
    return [COMMON_BIN, *others, RARE_BIN]


def _rows(
    rng: random.Random, merchant: str, terminal: str, count: int, prefix: str
) -> Iterator[str]:
    """COPY text lines (tab-separated, in Transaction's column order), oldest first."""
    bins = _bins(rng)
    bin_weights = [25.0] + [75.0 / 38] * 38 + [0.01]
    cards = [
        (rng.choices(bins, bin_weights)[0], f"{rng.randrange(10000):04d}", secrets.token_hex(16))
        for _ in range(max(count // 5, 1))
    ]
    customers = [f"cust-{n:06d}" for n in range(max(count // 10, 1))]
    names = [s for s, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    step = DAYS * 86400 / count
    start = END - timedelta(days=DAYS)
    columns = [c.name for c in Transaction.__table__.columns]
    for n in range(count):
        at = start + timedelta(seconds=n * step + rng.random() * step)
        status = rng.choices(names, weights)[0]
        if rng.random() < 0.1:
            minor = rng.choice((100000, 500000, 1000000))  # 1 000, 5 000, 10 000 KZT
        else:
            minor = int(10 ** rng.uniform(4, 7.7))  # 100 to 500 000 KZT, with tiyn
        first6, last4, fingerprint = rng.choice(cards)
        charged = minor if status in ("CHARGE", "REFUND") else 0
        stamp = at.isoformat()
        row: dict[str, Any] = {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "merchant_id": merchant,
            "terminal_id": terminal,
            "invoice_id": f"{prefix}{n:011d}",
            "invoice_claim": "\\N",
            "amount": minor,
            "currency": "KZT",
            "status": status,
            "reason_code": 0 if status not in ("FAILED", "REJECT") else 484,
            "payment_type": "card",
            "description": f"Order {n}",
            "account_id": rng.choice(customers) if rng.random() < 0.8 else "",
            "language": "rus",
            "card_mask": f"{first6}...{last4}",
            "card_fingerprint": fingerprint,
            "card_type": "VISA" if first6.startswith("4") else "MC",
            "reference": f"{rng.randrange(10**12):012d}",
            "secure": "f",
            "three_ds_md": "\\N",
            "three_ds_expires_at": "\\N",
            "amount_charged": charged,
            "amount_refunded": charged if status == "REFUND" else 0,
            "amount_refund_pending": 0,
            "operation_lock": "\\N",
            "created_at": stamp,
            "updated_at": stamp,
        }
        yield "\t".join(str(row.get(name, "")) for name in columns) + "\n"


def load(db: Database, count: int, seed: int) -> tuple[str, str]:
    """Two merchants and their transactions; returns (busy merchant id, other's id)."""
    with db.write() as session:
        busy = create_merchant(session, "Busy shop")
        other = create_merchant(session, "Other shop")
    rng = random.Random(seed)
    columns = ", ".join(c.name for c in Transaction.__table__.columns)
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        for creds, rows, prefix in ((busy, count, "1"), (other, count // 10, "2")):
            began = time.perf_counter()
            with cursor.copy(f"COPY transactions ({columns}) FROM STDIN") as copy:
                buffer = io.StringIO()
                for n, line in enumerate(
                    _rows(rng, creds.merchant_id, creds.terminal_id, rows, prefix)
                ):
                    buffer.write(line)
                    if n % 20000 == 19999:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
            raw.commit()
            print(f"loaded {rows:,} rows in {time.perf_counter() - began:.1f} s", flush=True)
        began = time.perf_counter()
        cursor.execute("ANALYZE transactions")
        raw.commit()
        print(f"ANALYZE in {time.perf_counter() - began:.1f} s", flush=True)
    finally:
        raw.close()
    return busy.merchant_id, other.merchant_id


def _cursor_at(db: Database, merchant: str, params: dict[str, str], depth: int) -> str:
    """The ``before=`` of the page that starts ``depth`` rows down the filtered list."""
    wanted = parse_filter(params)
    stmt = transactions_query(merchant, wanted).limit(None).offset(depth).limit(1)
    with db.read() as session:
        tx = session.scalars(stmt).first()
    return "" if tx is None else f"{tx.created_at.isoformat()}~{tx.id}"


def _sample(db: Database, merchant: str) -> dict[str, str]:
    """Values that exist: an invoice, a payer, a card, from the middle of the data."""
    with db.read() as session:
        tx = session.scalars(
            sa.select(Transaction)
            .where(Transaction.merchant_id == merchant, Transaction.account_id != "")
            .order_by(Transaction.created_at)
            .offset(_count(db, merchant) * 2 // 5)
            .limit(1)
        ).one()
        rare_mask = session.scalars(
            sa.select(Transaction.card_mask)
            .where(Transaction.merchant_id == merchant, Transaction.card_mask.like(RARE_BIN + "%"))
            .limit(1)
        ).first()
    return {
        "invoice": tx.invoice_id,
        "account": tx.account_id,
        "mask": tx.card_mask,
        "last4": tx.card_mask[-4:],
        "rare_mask": rare_mask or f"{RARE_BIN}...0000",
    }


def _count(db: Database, merchant: str) -> int:
    with db.read() as session:
        return int(
            session.scalar(sa.select(sa.func.count()).where(Transaction.merchant_id == merchant))
            or 0
        )


def cases(db: Database, merchant: str) -> list[tuple[str, dict[str, str]]]:
    """Every filter the page offers, alone and combined; page one and deep pages."""
    s = _sample(db, merchant)
    day = (END - timedelta(days=30)).date().isoformat()
    month = [(END - timedelta(days=60)).date().isoformat(), day]
    found: list[tuple[str, dict[str, str]]] = [
        ("no filter", {}),
        ("status=CHARGE (55%)", {"status": "CHARGE"}),
        ("status=REFUND (5%)", {"status": "REFUND"}),
        ("status=VERIFIED (0.05%)", {"status": "VERIFIED"}),
        ("invoice (exists)", {"invoice": s["invoice"]}),
        ("invoice (absent)", {"invoice": "999999999"}),
        ("one day", {"from": day, "to": day}),
        ("30 days", {"from": month[0], "to": month[1]}),
        ("amount = 1000.00 (common)", {"amount_min": "1000", "amount_max": "1000"}),
        ("amount = 12345.67 (rare)", {"amount_min": "12345.67", "amount_max": "12345.67"}),
        ("amount 20000..21000", {"amount_min": "20000", "amount_max": "21000"}),
        ("amount >= 499000", {"amount_min": "499000"}),
        ("card first6 (common BIN)", {"card": COMMON_BIN}),
        ("card first6 (rare BIN)", {"card": RARE_BIN}),
        ("card last4", {"card": s["last4"]}),
        ("card mask", {"card": s["mask"]}),
        ("account", {"account": s["account"]}),
        ("account + status=CHARGE", {"account": s["account"], "status": "CHARGE"}),
        ("status=REFUND + 30 days", {"status": "REFUND", "from": month[0], "to": month[1]}),
        ("card last4 + 30 days", {"card": s["last4"], "from": month[0], "to": month[1]}),
        ("status=FAILED + amount >= 100000", {"status": "FAILED", "amount_min": "100000"}),
        (
            "status=VERIFIED + amount 20000..21000",
            {"status": "VERIFIED", "amount_min": "20000", "amount_max": "21000"},
        ),
        ("card mask (rare BIN) + status", {"card": s["rare_mask"], "status": "CHARGE"}),
        (
            "everything",
            {"status": "CHARGE", "from": month[0], "to": month[1]}
            | {"amount_min": "100", "amount_max": "500000", "card": COMMON_BIN},
        ),
    ]
    deep: list[tuple[str, dict[str, str]]] = []
    for name, params in (
        ("no filter", {}),
        ("status=CHARGE", {"status": "CHARGE"}),
        ("status=REFUND", {"status": "REFUND"}),
        ("card first6 (common BIN)", {"card": COMMON_BIN}),
        ("30 days", {"from": month[0], "to": month[1]}),
    ):
        for depth in (10_000, _count(db, merchant) * 2 // 5):
            before = _cursor_at(db, merchant, params, depth)
            if before:
                deep.append((f"{name}, {depth:,} rows down", params | {"before": before}))
    return found + deep


def timed(db: Database, merchant: str, wanted: ListFilter, runs: int) -> tuple[list[float], int]:
    """Milliseconds per run of the page's statement, and the rows it returned."""
    stmt = transactions_query(merchant, wanted)
    times: list[float] = []
    count = 0
    for _ in range(runs):
        began = time.perf_counter()
        with db.read() as session:
            count = len(list(session.scalars(stmt)))
        times.append((time.perf_counter() - began) * 1000)
    return times, count


def explain(db: Database, merchant: str, wanted: ListFilter) -> str:
    stmt = transactions_query(merchant, wanted)
    compiled = stmt.compile(db.engine, compile_kwargs={"literal_binds": True})
    with db.engine.connect() as conn:
        lines = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}").scalars()
        return "\n".join(f"    {line}" for line in lines)


def run(db: Database, merchant: str, runs: int, show_plans: bool, limit: int) -> int:
    slow = 0
    total = _count(db, merchant)
    print(f"\nmerchant with {total:,} transactions, {runs} runs per case, pages of {limit}")
    print(f"{'case':<48} {'rows':>5} {'median ms':>10} {'p95 ms':>8}")
    for name, params in cases(db, merchant):
        wanted = parse_filter(params | {"limit": str(limit)})
        times, count = timed(db, merchant, wanted, runs)
        median = statistics.median(times)
        p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
        flag = "  SLOW" if p95 >= 200 else ""
        slow += bool(flag)
        print(f"{name:<48} {count:>5} {median:>10.1f} {p95:>8.1f}{flag}", flush=True)
        if show_plans:
            print(explain(db, merchant, wanted))
    return slow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN, help="server to create the DB on")
    parser.add_argument("--database-url", help="an already loaded bench database (no load)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--limit", type=int, default=50, help="page size")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE every case")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    args = parser.parse_args(argv)

    if args.database_url:
        db = Database(args.database_url)
        upgrade(db)  # new indexes, if any
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE transactions")
            merchants: list[str] = list(
                conn.execute(
                    sa.select(Transaction.merchant_id)
                    .group_by(Transaction.merchant_id)
                    .order_by(sa.func.count().desc())
                    .limit(2)
                ).scalars()
            )
        try:
            slow = sum(run(db, m, args.runs, args.explain, args.limit) for m in merchants)
            return 1 if slow else 0
        finally:
            db.dispose()

    name = f"tolem_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(args.admin_url).set(database=name).render_as_string(False)
    print(f"database {url}", flush=True)
    db = Database(url)
    try:
        upgrade(db)
        loaded = load(db, args.rows, args.seed)
        slow = sum(run(db, m, args.runs, args.explain, args.limit) for m in loaded)
        return 1 if slow else 0
    finally:
        db.dispose()
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
