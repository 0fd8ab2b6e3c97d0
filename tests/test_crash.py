"""Crash safety (issue 10): ``tolem serve`` SIGKILLed at random moments under load.

A real gateway process on a database file pays through two acquirers: the simulator
(the sandbox's test terminal) and, for a terminal that is not a test one, an external
acquirer with a durable ledger of its own (tests/crash_acquirer.py, loaded with
``TOLEM_ACQUIRER``), whose calls take a little time so that kills land between a
payment's claim, its call and its finish. Shops (threads) pay and refund over HTTP and
get postLinks on a real receiver. The gateway is killed with SIGKILL at least
:data:`KILLS` times and started again each time; then the recovery sweep and postLink
delivery are given time to finish, and the test proves:

- every payment and refund acknowledged with a final answer is stored with it;
- no payment was sent to an acquirer twice, every ledger agrees with the gateway (an
  approval for each successful payment and none for the others, refunds to the tiyn);
- every postLink of every final transaction and refund arrived (duplicates counted and
  allowed, none lost);
- nothing is left in progress: no payment NEW, no operation pending, no amount
  reserved, no operation lock, no card held for a payment that has ended.

The figures of the run are printed (``-s`` shows them) and RELIABILITY.md quotes them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fresh_postgres
from tests.crash_acquirer import LedgerAcquirer
from tests.receiver import Received, Receiver, running_receiver
from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    TERMINAL,
    Gateway,
    cryptogram,
    cryptopay,
    free_port,
    new_invoice,
    payment_body,
    query,
    token,
)
from tolem.db.engine import Database
from tolem.merchants.service import create_merchant
from tolem.testing import wait_ready

ROOT = Path(__file__).resolve().parent.parent
SERVE = (sys.executable, "-m", "tolem", "serve", "--host", "127.0.0.1", "--workers", "1")
#: The databases to crash on, comma-separated: both, as every database test of the
#: suite; ``TOLEM_TEST_CRASH_DATABASES=sqlite`` runs SQLite alone (about two minutes).
DATABASES = os.environ.get("TOLEM_TEST_CRASH_DATABASES", "sqlite,postgresql").split(",")

#: Kills of the gateway process, each at a random moment under load.
KILLS = 20
#: Threads paying (and refunding) at once.
SHOPS = 4
#: How long the gateway runs between being ready and being killed: uniform in this range.
UP_SECONDS = (0.3, 1.5)
#: The external acquirer's pause before and after it records (up to), per call.
ACQUIRER_PAUSE = 0.05
#: TOLEM_SECURE3D_TIMEOUT of the gateway: its sweeps (expiry and recovery) run every 2 s.
SWEEP_TIMEOUT = 8
#: Past the longest grace (the simulator's 65 s), sweeps and postLink retries: the
#: deadline for everything to be settled after the last start.
SETTLE_SECONDS = 100.0

DECLINING_CARD = ("4003032704547597", "0920", "170")  # the simulator: 465
CARD = ("4405639704015096", "0125", "815")


@dataclass
class Merchant:
    client_id: str
    client_secret: str
    terminal_id: str
    external: bool


@dataclass
class Record:
    """What the shops saw, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Payment id -> (status, reason code) of every final answer received.
    answered: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Invoices whose payment answer never came (killed mid-request) or was not final.
    unanswered: list[str] = field(default_factory=list)
    #: Operation id -> "done" of every refund acknowledged as done.
    refunds_done: dict[str, str] = field(default_factory=dict)
    refunds_unanswered: int = 0
    refunds_refused: int = 0
    attempts: int = 0


class Server:
    """One ``tolem serve`` process at a time on a fixed port, killed and started again."""

    def __init__(self, data_dir: Path, database_url: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.database_url = database_url
        self.env = env
        self.log_path = data_dir / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*SERVE, "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: SIGKILL reaches all of it
            )
        self.starts += 1
        wait_ready(self.base_url, self.process, self.log_path, timeout=60)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tolem.db'}"
        return
    with fresh_postgres("tolem_crash") as url:
        yield url


def _shop(
    gw: Gateway,
    merchants: list[Merchant],
    receiver: Receiver,
    record: Record,
    stop: threading.Event,
    seed: int,
) -> None:
    """Pay, and refund some payments, until told to stop; note every answer."""
    rng = random.Random(seed)
    with httpx.Client(base_url=gw.base_url, timeout=15) as client:
        while not stop.is_set():
            try:
                _one_payment(gw, client, rng, merchants, receiver, record)
            except (httpx.TransportError, _Down):
                time.sleep(0.05)  # the gateway is down: try again soon


class _Down(Exception):
    """An answer that says the gateway is not serving (a 5xx while it dies)."""


def _token(client: httpx.Client, merchant: Merchant, **form: Any) -> str:
    try:
        answer = token(
            client,
            terminal=merchant.terminal_id,
            client_id=merchant.client_id,
            client_secret=merchant.client_secret,
            **form,
        )
    except AssertionError as exc:
        raise _Down(str(exc)) from None
    return str(answer["access_token"])


def _one_payment(
    gw: Gateway,
    client: httpx.Client,
    rng: random.Random,
    merchants: list[Merchant],
    receiver: Receiver,
    record: Record,
) -> None:
    merchant = merchants[0] if rng.random() < 0.75 else merchants[1]
    amount = rng.randrange(100, 1000)  # on the external acquirer, ...7 declines (484)
    card = DECLINING_CARD if not merchant.external and rng.random() < 0.2 else CARD
    invoice = new_invoice()
    access = _token(client, merchant, invoice=invoice, amount=amount)
    body = payment_body(
        gw,
        invoice,
        amount=amount,
        card=card,
        cryptogram=cryptogram(gw, *card, terminal=merchant.terminal_id),
        postLink=receiver.url(f"/ok/{invoice}"),
        failurePostLink=receiver.url(f"/ok/{invoice}/failure"),
    )
    with record.lock:
        record.attempts += 1
    try:
        answer = cryptopay(client, access, body)
    except httpx.TransportError:
        with record.lock:
            record.unanswered.append(invoice)
        raise
    content = answer.json() if answer.headers.get("content-type", "").startswith("app") else {}
    if answer.status_code == 200:
        with record.lock:
            record.answered[content["id"]] = (content["status"], 0)
    elif answer.status_code == 400 and content.get("id") and content.get("code") != 458:
        with record.lock:
            record.answered[content["id"]] = ("FAILED", int(content["code"]))
        return
    else:  # 458 (no answer from the acquirer) or the gateway dying: unknown
        with record.lock:
            record.unanswered.append(invoice)
        return
    if merchant.external and content["status"] == "CHARGE" and rng.random() < 0.5:
        _refund(client, rng, merchant, content["id"], amount, record)


def _refund(
    client: httpx.Client,
    rng: random.Random,
    merchant: Merchant,
    tx_id: str,
    amount: int,
    record: Record,
) -> None:
    service = _token(client, merchant)
    for _ in range(rng.choice((1, 2))):
        part = rng.randrange(10, amount // 2 + 1)
        try:
            answer = client.post(
                f"/operation/{tx_id}/refund",
                params={"amount": str(part)},
                headers={"Authorization": f"Bearer {service}"},
            )
        except httpx.TransportError:
            with record.lock:
                record.refunds_unanswered += 1
            raise
        with record.lock:
            if answer.status_code == 200:
                record.refunds_done[answer.json()["operationId"]] = "done"
            elif answer.status_code == 400:
                record.refunds_refused += 1  # e.g. "the processor did not answer"
            else:
                record.refunds_unanswered += 1
                raise _Down(answer.text)


def _whole(request: Received) -> bool:
    """A postLink whose whole body arrived (a gateway killed while sending leaves part)."""
    length = int(request.headers.get("content-length") or -1)
    return request.path.startswith("/ok/") and len(request.body) == length


def _money(minor_units: Any) -> Decimal:
    return Decimal(int(minor_units)) / 100


def _settled(database_url: str) -> dict[str, int]:
    """What is still in progress, by kind (all zero once everything is settled)."""
    checks = {
        "payments NEW": "SELECT count(*) FROM transactions WHERE status = 'NEW'",
        "operations pending": "SELECT count(*) FROM operations WHERE state = 'pending'",
        "amounts reserved": "SELECT count(*) FROM transactions WHERE amount_refund_pending <> 0",
        "operation locks": "SELECT count(*) FROM transactions WHERE operation_lock IS NOT NULL",
        "cards held": "SELECT count(*) FROM saved_cards c JOIN transactions t"
        " ON t.id = c.transaction_id WHERE c.state = 'pending' AND t.status <> 'NEW'",
        "postLinks undelivered": "SELECT count(*) FROM notifications WHERE state <> 'delivered'",
    }
    return {name: int(query(database_url, sql)[0][0]) for name, sql in checks.items()}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_under_load_loses_nothing_and_charges_nothing_twice(
    database_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ledger_path = tmp_path / "acquirer.db"
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOLEM_")},
        "PYTHONPATH": pythonpath,
        "TOLEM_DATA_DIR": str(data_dir),
        "TOLEM_DATABASE_URL": database_url,
        "TOLEM_LOG_LEVEL": "info",
        "TOLEM_ACCESS_LOG": "false",
        "TOLEM_ACQUIRER": "tests.crash_acquirer:create",
        "TOLEM_TEST_ACQUIRER_LEDGER": str(ledger_path),
        "TOLEM_TEST_ACQUIRER_PAUSE": str(ACQUIRER_PAUSE),
        "TOLEM_SECURE3D_TIMEOUT": str(SWEEP_TIMEOUT),
        "TOLEM_POSTLINK_WORKER": "true",
        "TOLEM_POSTLINK_TIMEOUT": "2",
        "TOLEM_POSTLINK_RETRY_SCHEDULE": ",".join(["0.5"] * 60),
        "TOLEM_POSTLINK_POLL_INTERVAL": "0.05",
    }
    server = Server(data_dir, database_url, env)
    server.start()  # migrates the database and seeds the sandbox's test merchant
    db = Database(database_url)
    try:
        with db.write() as session:
            creds = create_merchant(session, "Crash shop", is_test=False, two_step=False)
    finally:
        db.dispose()
    merchants = [
        Merchant(creds.client_id, creds.client_secret, creds.terminal_id, external=True),
        Merchant(CLIENT_ID, CLIENT_SECRET, TERMINAL, external=False),
    ]
    gw = Gateway(server.base_url, database_url, data_dir, server.log_path, server.process)  # type: ignore[arg-type]
    gw.public_key  # noqa: B018 - read once, while the gateway is up
    record = Record()
    stop = threading.Event()
    rng = random.Random()
    with running_receiver() as receiver:
        shops = [
            threading.Thread(
                target=_shop, args=(gw, merchants, receiver, record, stop, rng.random())
            )
            for _ in range(SHOPS)
        ]
        for shop in shops:
            shop.start()
        try:
            for _ in range(KILLS):
                time.sleep(rng.uniform(*UP_SECONDS))
                server.kill()
                server.start()
        finally:
            stop.set()
            for shop in shops:
                shop.join(timeout=60)
        load_seconds = time.monotonic() - started
        try:
            deadline = time.monotonic() + SETTLE_SECONDS
            left = _settled(database_url)
            while any(left.values()) and time.monotonic() < deadline:
                time.sleep(0.5)
                left = _settled(database_url)
            settle_seconds = SETTLE_SECONDS - (deadline - time.monotonic())
            assert not any(left.values()), f"still in progress after {SETTLE_SECONDS} s: {left}"
            received = list(receiver.requests)
        finally:
            server.stop()
    log = server.log()
    assert "recovery sweep failed" not in log, log[-4000:]
    _check(database_url, LedgerAcquirer(ledger_path), creds.terminal_id, record, received)
    postlinks = [r for r in received if _whole(r)]
    notifications = int(query(database_url, "SELECT count(*) FROM notifications")[0][0])
    figures = {
        "kills": KILLS,
        "starts": server.starts,
        "payments attempted": record.attempts,
        "payments answered": len(record.answered),
        "payments unanswered (killed mid-request)": len(record.unanswered),
        "transactions": int(query(database_url, "SELECT count(*) FROM transactions")[0][0]),
        "refunds done (acknowledged)": len(record.refunds_done),
        "refunds unanswered": record.refunds_unanswered,
        "recovered by the sweep": log.count("recovered payment") + log.count("recovered refund"),
        "postLinks enqueued": notifications,
        "postLinks received": len(postlinks),
        "bodies cut off by a kill": len(received) - len(postlinks),
        "duplicates": len(postlinks) - notifications,
        "load seconds": round(load_seconds),
        "settle seconds": round(settle_seconds),
    }
    print("\ncrash test:", json.dumps(figures))
    assert server.starts == KILLS + 1
    assert record.answered and record.unanswered, "no kill landed mid-payment"
    assert figures["recovered by the sweep"] > 0, "no kill left work for the sweep"


def _check(
    database_url: str,
    acquirer: LedgerAcquirer,
    external_terminal: str,
    record: Record,
    received: list[Received],
) -> None:
    rows = query(
        database_url,
        "SELECT id, terminal_id, status, reason_code, amount, amount_charged, amount_refunded,"
        " invoice_id FROM transactions",
    )
    txs = {row.id: row for row in rows}
    by_invoice = Counter(row.invoice_id for row in rows)
    # 1. Every final answer a shop received is what the gateway stores.
    for tx_id, (status, code) in record.answered.items():
        tx = txs[tx_id]
        if status == "CHARGE" and tx.status == "REFUND":
            status = "REFUND"  # refunded in full afterwards
        assert (tx.status, tx.reason_code) == (status, code), tx_id
    # Every payment attempted left one transaction (answered or not), none more.
    assert max(by_invoice.values()) == 1
    for invoice in record.unanswered:
        assert by_invoice[invoice] <= 1  # 0: killed before its claim committed
    # 2. The external acquirer: each payment sent once, its ledger and the gateway agree.
    authorize_calls = Counter(ref for _, ref in acquirer.calls("authorize"))
    assert not [ref for ref, n in authorize_calls.items() if n > 1], "a payment sent twice"
    refund_calls = Counter(ref for _, ref in acquirer.calls("refund"))
    assert not [ref for ref, n in refund_calls.items() if n > 1], "a refund sent twice"
    ledger = {row[0]: row for row in acquirer.rows()}
    for tx in rows:
        if tx.terminal_id != external_terminal:
            continue
        entry = ledger.get(tx.id)
        if entry is None:  # never reached the acquirer: the sweep failed it (1759)
            assert (tx.status, tx.reason_code) == ("FAILED", 1759), tx.id
            continue
        _kind, _auth, amount, approved, code, _rrn = entry[1:]
        assert bool(approved) == (tx.status in ("CHARGE", "REFUND")), tx.id
        assert Decimal(amount) == _money(tx.amount)
        if not approved:
            assert tx.reason_code == code, tx.id
        assert acquirer.refunded(tx.id) == _money(tx.amount_refunded), tx.id
    operations = query(
        database_url,
        "SELECT o.id, o.state, o.amount, o.reason_code FROM operations o"
        " JOIN transactions t ON t.id = o.transaction_id WHERE t.terminal_id = :t",
        t=external_terminal,
    )
    states = {op.id: op.state for op in operations}
    for op in operations:
        entry = ledger.get(op.id)
        approved = entry is not None and bool(entry[4])
        assert approved == (op.state == "done"), op.id
        if approved:
            assert Decimal(entry[3]) == _money(op.amount), op.id
    for op_id in record.refunds_done:
        assert states[op_id] == "done", op_id
    # 3. The simulator's ledger (the test terminal) and the gateway agree as well.
    simulated = query(
        database_url,
        "SELECT reference, approved, reason_code FROM simulator_ledger"
        " WHERE kind IN ('sale', 'authorize', 'verify')",
    )
    assert Counter(r.reference for r in simulated).most_common(1)[0][1] == 1
    outcomes = {r.reference: r for r in simulated}
    for tx in rows:
        if tx.terminal_id == external_terminal:
            continue
        entry = outcomes.get(tx.id)
        if entry is None:
            assert (tx.status, tx.reason_code) == ("FAILED", 1759), tx.id
            continue
        assert bool(entry.approved) == (tx.status in ("AUTH", "CHARGE")), tx.id
        if not entry.approved:
            assert tx.reason_code == entry.reason_code, tx.id
    # 4. Every postLink arrived: each final transaction's payment postLink, each done
    # refund's, at least once (duplicates are allowed, losses are not).
    arrived = Counter(json.loads(r.body)["id"] for r in received if _whole(r))
    wanted = Counter(
        row.transaction_id
        for row in query(database_url, "SELECT transaction_id FROM notifications")
    )
    for tx in rows:
        assert wanted[tx.id] >= 1, f"{tx.id} ({tx.status}) has no postLink"
    done_refunds = Counter(
        row.transaction_id
        for row in query(database_url, "SELECT transaction_id FROM operations WHERE state = 'done'")
    )
    for tx_id, count in wanted.items():
        assert count == 1 + done_refunds[tx_id], tx_id
        assert arrived[tx_id] >= count, f"{tx_id}: {arrived[tx_id]} of {count} postLinks"
