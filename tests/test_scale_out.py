"""Scale-out (issue 10): three ``tolem serve`` processes and two ``tolem worker``s on one
PostgreSQL database behave as one gateway.

The test makes an empty database of its own and starts the three servers at once on it
and on one empty data directory: they race to migrate it, to seed the sandbox merchant
and to generate the sandbox keys (which they then share). Their in-process postLink
delivery is off; two ``tolem worker`` processes deliver every postLink to a real
receiver on 127.0.0.1. A shop then works through all three servers at once, each
request on a server picked at random and most steps on another server than the one
before: tokens, cryptopay payments (approved, declined and retried, 3-D Secure passed
across servers or abandoned until a server's sweeper fails it), the same invoice raced
on two servers, two-step payments captured or voided (a charge racing a cancel or
another charge on another server), full and partial refunds raced across servers, one
``Idempotency-Key`` raced on three servers, saved cards (one card saved on the three
servers at once; a saved card paying on another server), and status checks through a
server other than the one that answered. Afterwards every invariant of the operations
issue (6) is checked from the database, from the status API of each server and from the
simulator's ledger, and every postLink must have reached the receiver (signed, byte for
byte as stored), duplicates counted, from both workers.

PostgreSQL only: several gateway processes on one database is what it is about. It
fails (never skips) when PostgreSQL cannot be reached. The figures it prints are in
RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from standardwebhooks import Webhook

from tests import secure3d_support as s3d
from tests.conftest import _postgres_reachable, fresh_postgres
from tests.receiver import Receiver, running_receiver
from tests.support import CLIENT_ID, CLIENT_SECRET, TERMINAL, new_invoice
from tolem.client._helpers import encrypt_json
from tolem.db.migrate import MIGRATIONS
from tolem.logs import redact
from tolem.testing import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SERVERS = 3
WORKERS = 2
#: Orders worked on at once (each may race two or three requests of its own).
PARALLEL = 12
#: How many times the order mix below is run (shuffled together).
ROUNDS = 3
#: The 3-D Secure time limit the servers run with: abandoned challenges expire during
#: the test, failed by the servers' sweepers (every server runs one).
SECURE3D_TIMEOUT = 20
SEED = int(os.environ.get("TOLEM_SCALE_OUT_SEED", "0")) or random.randrange(1, 10**6)

APPROVED = [("4405639704015096", "0125", "815"), ("5522042705066736", "0127", "775")]
DECLINED = [("4003032704547597", "0920", "170", 465), ("5578342710750560", "0920", "254", 484)]
SUCCEEDED = ("AUTH", "CHARGE", "CANCEL", "REFUND", "VERIFIED")

# "<time> INFO tolem.notifications <pid> postLink <id> attempt <n>: 200 (<ms> ms) delivered"
DELIVERED_LINE = re.compile(
    r"tolem\.notifications (?P<pid>\d+) postLink (?P<id>\S+) attempt \d+: "
    r"2\d\d \(\d+ ms\) delivered"
)


# --- the processes ---------------------------------------------------------------------


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Server(Process):
    base_url: str = ""
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.client = httpx.Client(base_url=self.base_url, timeout=60, limits=limits)


@dataclass(frozen=True)
class Shop:
    """A merchant's credentials, its terminal, and whether the terminal charges at once."""

    client_id: str
    client_secret: str
    terminal: str
    one_step: bool
    signing_secret: str = ""


@dataclass
class Cluster:
    database_url: str
    data_dir: Path
    log_dir: Path
    receiver: Receiver
    servers: list[Server] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    public_key: rsa.RSAPublicKey | None = None

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TOLEM_")}
        return base | {
            "TOLEM_DATA_DIR": str(self.data_dir),
            "TOLEM_DATABASE_URL": self.database_url,
            "TOLEM_LOG_LEVEL": "info",
            **extra,
        }

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tolem", *args],
            env=self.env(TOLEM_POSTLINK_WORKER="false"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"tolem {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start_server(self) -> Server:
        port = free_port()
        number = len(self.servers) + 1
        log_path = self.log_dir / f"serve-{number}.log"
        command = [sys.executable, "-m", "tolem", "serve", "--host", "127.0.0.1"]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*command, "--port", str(port), "--workers", "1"],
                env=self.env(
                    TOLEM_POSTLINK_WORKER="false",
                    TOLEM_ACCESS_LOG="false",
                    TOLEM_SECURE3D_TIMEOUT=str(SECURE3D_TIMEOUT),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Server(f"serve-{number}", process, log_path, f"http://127.0.0.1:{port}")
        self.servers.append(server)
        return server

    def start_worker(self) -> Process:
        number = len(self.workers) + 1
        log_path = self.log_dir / f"worker-{number}.log"
        env = self.env(
            TOLEM_POSTLINK_TIMEOUT="5",
            TOLEM_POSTLINK_RETRY_SCHEDULE="0.5,1,1,2,2,5",
            TOLEM_POSTLINK_POLL_INTERVAL="0.05",
        )
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tolem", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = Process(f"worker-{number}", process, log_path)
        self.workers.append(worker)
        return worker

    def processes(self) -> list[Process]:
        return [*self.servers, *self.workers]

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} (pid {p.process.pid})\n{p.log_text()[-6000:]}" for p in self.processes()
        )

    def check_alive(self) -> None:
        for p in self.processes():
            if not p.alive():
                raise AssertionError(
                    f"{p.name} exited ({p.process.returncode}):\n{p.log_text()[-6000:]}"
                )


def wait_ready(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"{server.name} exited:\n{server.log_text()}")
        with contextlib.suppress(httpx.TransportError):
            if server.client.get("/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{server.name} did not become ready:\n{server.log_text()}")


def stop(process: Process, timeout: float = 15) -> float:
    """SIGTERM; the seconds it took to exit (fails after ``timeout``)."""
    started = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    try:
        process.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{process.name} still running {timeout} s after SIGTERM:\n{process.log_text()}"
        ) from None
    return time.monotonic() - started


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    problem = _postgres_reachable()
    if problem:  # this test is about PostgreSQL: never a skip
        pytest.fail(problem)
    data_dir = tmp_path / "data"  # one data dir: the sandbox keys every process uses
    with fresh_postgres("tolem_scaleout") as url, running_receiver() as receiver:
        cluster = Cluster(url, data_dir, tmp_path, receiver)
        try:
            # All three at once, on an empty database and a data dir without keys: they
            # race to migrate the database (one at a time, under PostgreSQL's advisory
            # lock), to seed the sandbox merchant and to generate the keys, and must all
            # end up with the same.
            for _ in range(SERVERS):
                cluster.start_server()
            for server in cluster.servers:
                wait_ready(server)
            for _ in range(WORKERS):
                cluster.start_worker()
            yield cluster
        finally:
            for p in cluster.processes():  # only the processes this test started
                if p.alive():
                    p.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.process.wait(timeout=10)
            for server in cluster.servers:
                server.client.close()


# --- what the shop was told ------------------------------------------------------------


def money(minor_units: Any) -> Decimal:
    """Amounts read from the database are integer minor units (tiyn)."""
    return Decimal(int(minor_units)) / 100


def as_json(response: httpx.Response) -> Any:
    return json.loads(response.content, parse_float=Decimal)


@dataclass
class Told:
    """Everything the servers answered, recorded by the shop's threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: tx id -> (shop, invoice, amount, status the payment answered)
    paid: dict[str, tuple[Shop, str, Decimal, str]] = field(default_factory=dict)
    #: tx id -> (shop, invoice, reason code, status): declined, or 3-D Secure failed
    declined: dict[str, tuple[Shop, str, int, str]] = field(default_factory=dict)
    charged: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    refunded: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    cancelled: set[str] = field(default_factory=set)
    #: operation id -> (tx id, kind, amount): every operation answered 200
    operations: dict[str, tuple[str, str, Decimal]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    invoice_races: list[str] = field(default_factory=list)
    #: 3-D Secure payments whose cardholder never answered: tx id -> (shop, invoice)
    abandoned: dict[str, tuple[Shop, str]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    status_checks: int = 0
    idempotent_replays: int = 0

    def answered(self, response: httpx.Response) -> httpx.Response:
        with self.lock:
            self.statuses[response.status_code] += 1
        assert response.status_code < 500, (response.request.url, response.text)
        return response

    def operation(self, tx_id: str, kind: str, response: httpx.Response) -> bool:
        """Record an operation's answer: True if it was performed."""
        body = as_json(response)
        if response.status_code != 200:
            assert (response.status_code, body["code"]) == (400, 100), response.text
            with self.lock:
                self.refused[kind] += 1
            return False
        assert body["code"] == 0 and body["id"] == tx_id, response.text
        with self.lock:
            if response.headers.get("idempotent-replayed") == "true":
                self.idempotent_replays += 1
                assert self.operations[body["operationId"]] == (tx_id, kind, body["amount"])
                return True
            assert body["operationId"] not in self.operations, response.text
            self.operations[body["operationId"]] = (tx_id, kind, body["amount"])
            if kind == "charge":
                self.charged[tx_id] += body["amount"]
            elif kind == "refund":
                self.refunded[tx_id] += body["amount"]
            else:
                self.cancelled.add(tx_id)
        return True

    def expected_status(self, tx_id: str) -> str:
        status = self.paid[tx_id][3]
        if tx_id in self.cancelled:
            return "CANCEL"
        charged = self.charged.get(tx_id, Decimal(0))
        if charged == 0:
            return status  # AUTH (two-step) as paid
        return "REFUND" if self.refunded.get(tx_id, Decimal(0)) == charged else "CHARGE"


# --- the shop: requests spread over the servers ----------------------------------------


@dataclass
class Shopper:
    cluster: Cluster
    told: Told
    rng: random.Random
    service_tokens: dict[str, str]

    @property
    def servers(self) -> list[Server]:
        return self.cluster.servers

    def pick(self, k: int = 1, avoid: Server | None = None) -> list[Server]:
        """``k`` distinct servers, none of them ``avoid`` when that leaves enough."""
        pool = [s for s in self.servers if s is not avoid]
        if len(pool) < k:
            pool = list(self.servers)
        return self.rng.sample(pool, k)

    def one(self, avoid: Server | None = None) -> Server:
        return self.pick(1, avoid)[0]

    def token(self, server: Server, shop: Shop, invoice: str, amount: Decimal) -> str:
        form = {
            "grant_type": "client_credentials",
            "scope": "webapi usermanagement email_send verification statement statistics payment",
            "client_id": shop.client_id,
            "client_secret": shop.client_secret,
            "terminal": shop.terminal,
            "invoiceID": invoice,
            "amount": str(amount),
            "currency": "KZT",
        }
        response = self.told.answered(server.client.post("/oauth2/token", data=form))
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def body(
        self, shop: Shop, invoice: str, amount: Decimal, card: tuple[str, ...], **extra: Any
    ) -> dict[str, Any]:
        key = self.cluster.public_key
        assert key is not None
        link = self.cluster.receiver.url(f"/ok/{invoice}")
        return {
            "amount": float(amount),
            "currency": "KZT",
            "name": "JON JONSON",
            "cryptogram": encrypt_json(
                key,
                {"hpan": card[0], "expDate": card[1], "cvc": card[2], "terminalId": shop.terminal},
            ),
            "invoiceId": invoice,
            "description": "scale-out order",
            "accountId": f"acc-{invoice}",
            "email": "jj@example.com",
            "phone": "77777777777",
            "cardSave": False,
            "postLink": link,
            "failurePostLink": link + "/fail",
            **extra,
        }

    def cryptopay(self, server: Server, tok: str, body: dict[str, Any]) -> httpx.Response:
        return self.told.answered(
            server.client.post(
                "/payment/cryptopay", json=body, headers={"Authorization": f"Bearer {tok}"}
            )
        )

    def amount(self) -> Decimal:
        return Decimal(self.rng.randrange(20_000, 2_000_000)) / 100

    def pay(self, shop: Shop, amount: Decimal | None = None, **extra: Any) -> tuple[str, Server]:
        """An approved payment: token on one server, cryptopay on another."""
        amount = amount if amount is not None else self.amount()
        invoice = new_invoice()
        first = self.one()
        tok = self.token(first, shop, invoice, amount)
        server = self.one(avoid=first)
        card = self.rng.choice(APPROVED)
        response = self.cryptopay(server, tok, self.body(shop, invoice, amount, card, **extra))
        assert response.status_code == 200, response.text
        body = as_json(response)
        status = "CHARGE" if shop.one_step else "AUTH"
        assert body["status"] == status, response.text
        self.record_paid(body["id"], shop, invoice, amount, status)
        self.check(shop, invoice, body["id"], status, avoid=server)
        return str(body["id"]), server

    def record_paid(self, tx: str, shop: Shop, invoice: str, amount: Decimal, status: str) -> None:
        with self.told.lock:
            assert tx not in self.told.paid
            self.told.paid[tx] = (shop, invoice, amount, status)
            if status == "CHARGE":
                self.told.charged[tx] = amount

    def check(
        self, shop: Shop, invoice: str, tx: str, status: str, avoid: Server | None = None
    ) -> dict[str, Any]:
        """check-status through another server than the one that answered last."""
        server = self.one(avoid=avoid)
        tok = self.service_tokens[shop.client_id]
        response = self.told.answered(
            server.client.get(
                f"/check-status/payment/transaction/{invoice}",
                headers={"Authorization": f"Bearer {tok}"},
            )
        )
        assert response.status_code == 200, response.text
        found: dict[str, Any] = as_json(response)["transaction"]
        assert (found["id"], found["statusName"]) == (tx, status), (server.name, found)
        with self.told.lock:
            self.told.status_checks += 1
        return found

    def operate(
        self,
        server: Server,
        shop: Shop,
        tx: str,
        kind: str,
        amount: Decimal | None = None,
        key: str | None = None,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.service_tokens[shop.client_id]}"}
        if key:
            headers["Idempotency-Key"] = key
        params = {} if amount is None else {"amount": str(amount)}
        return self.told.answered(
            server.client.post(f"/operation/{tx}/{kind}", params=params, headers=headers)
        )

    def race(self, *calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
        """The calls at once, each in its own thread, released together."""
        barrier = threading.Barrier(len(calls))

        def run(call: Callable[[], httpx.Response]) -> httpx.Response:
            barrier.wait()
            return call()

        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(run, calls))


def part(amount: Decimal, share: str) -> Decimal:
    return (amount * Decimal(share)).quantize(Decimal("0.01"), rounding=ROUND_DOWN)


# --- the orders: each a little story told through several servers ----------------------


def charge_then_refunds_race(s: Shopper, shop: Shop) -> None:
    """Full charge; three refunds of 40 % at once on three servers: exactly two fit."""
    tx, paid_on = s.pay(shop)
    amount = s.told.paid[tx][2]
    server = s.one(avoid=paid_on)
    assert s.told.operation(tx, "charge", s.operate(server, shop, tx, "charge"))
    forty = part(amount, "0.4")
    answers = s.race(*(lambda sv=sv: s.operate(sv, shop, tx, "refund", forty) for sv in s.servers))
    won = [s.told.operation(tx, "refund", a) for a in answers]
    assert won.count(True) == 2, [a.text for a in answers]
    assert any("exceed" in a.json()["message"] for a in answers if a.status_code == 400)
    rest = s.operate(s.one(), shop, tx, "refund")  # no amount: what is left
    assert s.told.operation(tx, "refund", rest), rest.text
    assert as_json(rest)["status"] == "REFUND"
    s.check(shop, s.told.paid[tx][1], tx, "REFUND")


def partial_charge_full_refund_races_partial(s: Shopper, shop: Shop) -> None:
    """Charge 60 %; a full refund races a refund of half of it on another server."""
    tx, paid_on = s.pay(shop)
    amount = s.told.paid[tx][2]
    charge = part(amount, "0.6")
    answer = s.operate(s.one(avoid=paid_on), shop, tx, "charge", charge)
    assert s.told.operation(tx, "charge", answer), answer.text
    assert as_json(answer)["amountCharged"] == charge
    a, b = s.pick(2)
    half = part(charge, "0.5")
    answers = s.race(
        lambda: s.operate(a, shop, tx, "refund"), lambda: s.operate(b, shop, tx, "refund", half)
    )
    won = [s.told.operation(tx, "refund", x) for x in answers]
    # Whichever reserves first wins. The full refund takes what is left when it begins:
    # after the half, the rest; if the half slipped in between its read and its
    # reservation, it is refused (it would exceed). The half is refused after the full.
    assert won.count(True) >= 1, [x.text for x in answers]
    s.check(shop, s.told.paid[tx][1], tx, s.told.expected_status(tx))


def charge_races_cancel(s: Shopper, shop: Shop) -> None:
    tx, _ = s.pay(shop)
    a, b = s.pick(2)
    answers = s.race(
        lambda: s.operate(a, shop, tx, "charge"), lambda: s.operate(b, shop, tx, "cancel")
    )
    won = [s.told.operation(tx, k, x) for k, x in zip(("charge", "cancel"), answers, strict=True)]
    assert won.count(True) == 1, [x.text for x in answers]
    s.check(shop, s.told.paid[tx][1], tx, "CHARGE" if won[0] else "CANCEL")


def charge_races_charge(s: Shopper, shop: Shop) -> None:
    tx, _ = s.pay(shop)
    amount = s.told.paid[tx][2]
    a, b = s.pick(2)
    answers = s.race(
        lambda: s.operate(a, shop, tx, "charge"),
        lambda: s.operate(b, shop, tx, "charge", part(amount, "0.5")),
    )
    won = [s.told.operation(tx, "charge", x) for x in answers]
    assert won.count(True) == 1, [x.text for x in answers]
    s.check(shop, s.told.paid[tx][1], tx, "CHARGE")


def cancelled(s: Shopper, shop: Shop) -> None:
    tx, paid_on = s.pay(shop)
    answer = s.operate(s.one(avoid=paid_on), shop, tx, "cancel")
    assert s.told.operation(tx, "cancel", answer), answer.text
    s.check(shop, s.told.paid[tx][1], tx, "CANCEL")
    late = s.operate(s.one(), shop, tx, "charge")
    assert not s.told.operation(tx, "charge", late)


def left_authorized(s: Shopper, shop: Shop) -> None:
    tx, paid_on = s.pay(shop)
    s.check(shop, s.told.paid[tx][1], tx, "AUTH", avoid=paid_on)


def one_step_refunds_race(s: Shopper, shop: Shop) -> None:
    """Charged at once; four refunds of 30 % at once, spread over the servers: three fit."""
    tx, _ = s.pay(shop)
    amount = s.told.paid[tx][2]
    thirty = part(amount, "0.3")
    targets = [*s.servers, s.one()]
    answers = s.race(*(lambda sv=sv: s.operate(sv, shop, tx, "refund", thirty) for sv in targets))
    won = [s.told.operation(tx, "refund", a) for a in answers]
    assert won.count(True) == 3, [a.text for a in answers]
    s.check(shop, s.told.paid[tx][1], tx, "CHARGE")


def idempotent_refund_race(s: Shopper, shop: Shop) -> None:
    """One Idempotency-Key on three servers at once: one refund, however it is answered."""
    tx, _ = s.pay(shop)
    amount = s.told.paid[tx][2]
    key = f"refund-{tx}"
    half = part(amount, "0.5")
    answers = s.race(
        *(lambda sv=sv: s.operate(sv, shop, tx, "refund", half, key=key) for sv in s.servers)
    )
    codes = Counter(a.status_code for a in answers)
    # The first runs; the others are refused while it runs (409) or replay its answer.
    assert codes[200] >= 1 and set(codes) <= {200, 409}, [a.text for a in answers]
    done = [a for a in answers if a.status_code == 200]
    assert len({as_json(a)["operationId"] for a in done}) == 1, [a.text for a in done]
    for answer in sorted(done, key=lambda a: a.headers.get("idempotent-replayed") == "true"):
        assert s.told.operation(tx, "refund", answer)
    # Afterwards, from any server: the same answer again, replayed.
    again = s.operate(s.one(), shop, tx, "refund", half, key=key)
    assert again.headers.get("idempotent-replayed") == "true", again.text
    assert as_json(again)["operationId"] == as_json(done[0])["operationId"]
    assert s.told.operation(tx, "refund", again)
    s.check(shop, s.told.paid[tx][1], tx, "CHARGE")


def one_step_kept(s: Shopper, shop: Shop) -> None:
    tx, paid_on = s.pay(shop)
    s.check(shop, s.told.paid[tx][1], tx, "CHARGE", avoid=paid_on)


def declined_then_retried(s: Shopper, shop: Shop) -> None:
    """Declined on one server; the same invoice paid on another (a decline frees it)."""
    invoice, amount = new_invoice(), s.amount()
    pan, exp, cvc, code = s.rng.choice(DECLINED)
    first = s.one()
    response = s.cryptopay(
        first,
        s.token(s.one(), shop, invoice, amount),
        s.body(shop, invoice, amount, (pan, exp, cvc)),
    )
    assert (response.status_code, response.json()["code"]) == (400, code), response.text
    failed = str(response.json()["id"])
    with s.told.lock:
        s.told.declined[failed] = (shop, invoice, code, "FAILED")
    s.check(shop, invoice, failed, "FAILED", avoid=first)
    second = s.one(avoid=first)
    retried = s.cryptopay(
        second,
        s.token(s.one(), shop, invoice, amount),
        s.body(shop, invoice, amount, s.rng.choice(APPROVED)),
    )
    assert retried.status_code == 200, retried.text
    tx = str(retried.json()["id"])
    status = "CHARGE" if shop.one_step else "AUTH"
    s.record_paid(tx, shop, invoice, amount, status)
    s.check(shop, invoice, tx, status, avoid=second)


def invoice_race(s: Shopper, shop: Shop) -> None:
    """One invoice paid on two servers at once: one payment, the other refused."""
    invoice, amount = new_invoice(), s.amount()
    a, b = s.pick(2)
    tokens = [s.token(s.one(), shop, invoice, amount) for _ in range(2)]
    bodies = [s.body(shop, invoice, amount, s.rng.choice(APPROVED)) for _ in range(2)]
    answers = s.race(
        lambda: s.cryptopay(a, tokens[0], bodies[0]), lambda: s.cryptopay(b, tokens[1], bodies[1])
    )
    assert sorted(x.status_code for x in answers) == [200, 400], [x.text for x in answers]
    [won] = [x for x in answers if x.status_code == 200]
    [lost] = [x for x in answers if x.status_code == 400]
    assert "already used" in lost.json()["message"], lost.text
    status = "CHARGE" if shop.one_step else "AUTH"
    tx = str(won.json()["id"])
    s.record_paid(tx, shop, invoice, amount, status)
    with s.told.lock:
        s.told.invoice_races.append(invoice)
    s.check(shop, invoice, tx, status)


def saved_card_elsewhere(s: Shopper, shop: Shop) -> None:
    """A card saved through one server pays an order through another (the shared card key)."""
    tx, paid_on = s.pay(shop, cardSave=True)
    _, invoice, _, _ = s.told.paid[tx]
    [row] = query(s.cluster.database_url, "SELECT card_id FROM transactions WHERE id = :t", t=tx)
    assert row.card_id, "the approved payment saved no card"
    second, amount = new_invoice(), s.amount()
    server = s.one(avoid=paid_on)
    link = s.cluster.receiver.url(f"/ok/{second}")
    body = {
        "amount": float(amount),
        "currency": "KZT",
        "name": "JON JONSON",
        "terminalId": shop.terminal,
        "invoiceId": second,
        "description": "repeat order",
        "accountId": f"acc-{invoice}",
        "paymentType": "cardId",
        "cardId": {"id": row.card_id},
        "postLink": link,
        "failurePostLink": link + "/fail",
    }
    tok = s.token(s.one(), shop, second, amount)
    response = s.told.answered(
        server.client.post(
            "/payments/cards/auth", json=body, headers={"Authorization": f"Bearer {tok}"}
        )
    )
    assert response.status_code == 200, response.text
    status = "CHARGE" if shop.one_step else "AUTH"
    assert (response.json()["status"], response.json()["cardID"]) == (status, row.card_id)
    s.record_paid(str(response.json()["id"]), shop, second, amount, status)
    s.check(shop, second, str(response.json()["id"]), status, avoid=server)


def one_card_saved_on_three_servers_at_once(s: Shopper, shop: Shop) -> None:
    """Three orders of one customer, one card, each saving it, paid on the three servers
    at once: one cardID for all three (it was one per server before the fix)."""
    account = f"acc-{new_invoice()}"
    card = s.rng.choice(APPROVED)
    orders = []
    for server in s.servers:
        invoice, amount = new_invoice(), s.amount()
        tok = s.token(s.one(avoid=server), shop, invoice, amount)
        body = s.body(shop, invoice, amount, card, accountId=account, cardSave=True)
        orders.append((server, tok, body, invoice, amount))
    answers = s.race(*(lambda o=o: s.cryptopay(o[0], o[1], o[2]) for o in orders))
    assert [a.status_code for a in answers] == [200] * len(orders), [a.text for a in answers]
    assert len({a.json()["cardID"] for a in answers}) == 1, [a.text for a in answers]
    status = "CHARGE" if shop.one_step else "AUTH"
    for (server, _, _, invoice, amount), answer in zip(orders, answers, strict=True):
        s.record_paid(str(answer.json()["id"]), shop, invoice, amount, status)
        s.check(shop, invoice, str(answer.json()["id"]), status, avoid=server)


def secure3d_across_servers(s: Shopper, shop: Shop) -> None:
    """Challenge from one server, the ACS on a second, the answer confirmed on two at once."""
    invoice, amount = new_invoice(), s.amount()
    first = s.one()
    tok = s.token(s.one(), shop, invoice, amount)
    started = s.cryptopay(first, tok, s.body(shop, invoice, amount, s3d.VISA_3DS))
    assert started.status_code == 200 and "secure3D" in started.json(), started.text
    pending = s3d.Pending(tok, invoice, started.json())
    challenge = pending.secure3d
    form = {"PaReq": challenge["paReq"], "MD": challenge["md"], "TermUrl": s3d.TERM_URL}
    acs = s.one(avoid=first)
    page = s.told.answered(acs.client.post("/acs/pa", data=form))
    assert page.status_code == 200, page.text
    answer_on = s.one(avoid=acs)
    posted = s.told.answered(
        answer_on.client.post(
            "/acs/pa/answer", data=form | {"action": "confirm", "code": s3d.otp(page.text)}
        )
    )
    assert posted.status_code == 200, posted.text
    pa_res, md = s3d.hidden(posted.text, "PaRes"), s3d.hidden(posted.text, "MD")
    a, b = s.pick(2)
    answers = s.race(
        *(
            lambda sv=sv: s.told.answered(
                sv.client.post(
                    "/payment/confirm",
                    json={"ID": pending.id, "PaRes": pa_res, "MD": md},
                    headers={"Authorization": f"Bearer {tok}"},
                )
            )
            for sv in (a, b)
        )
    )
    status = "CHARGE" if shop.one_step else "AUTH"
    # Both confirmations tell the same outcome; the payment was finished once (one
    # postLink: checked with the others at the end).
    for x in answers:
        assert x.status_code in (200, 400), x.text
    ok = [x for x in answers if x.status_code == 200]
    assert ok, [x.text for x in answers]
    for x in ok:
        assert (x.json()["status"], x.json()["id"]) == (status, pending.id), x.text
    for x in answers:
        if x.status_code == 400:  # came after the other had finished it
            assert x.json()["code"] == 469, x.text
    s.record_paid(pending.id, shop, invoice, amount, status)
    s.check(shop, invoice, pending.id, status)


def secure3d_abandoned(s: Shopper, shop: Shop) -> None:
    """A challenge nobody answers: after SECURE3D_TIMEOUT a server's sweeper fails it."""
    invoice, amount = new_invoice(), s.amount()
    tok = s.token(s.one(), shop, invoice, amount)
    started = s.cryptopay(s.one(), tok, s.body(shop, invoice, amount, s3d.MASTERCARD_3DS))
    assert started.status_code == 200 and "secure3D" in started.json(), started.text
    with s.told.lock:
        s.told.abandoned[str(started.json()["id"])] = (shop, invoice)


TWO_STEP_ORDERS: list[tuple[Callable[[Shopper, Shop], None], int]] = [
    (charge_then_refunds_race, 8),
    (partial_charge_full_refund_races_partial, 6),
    (charge_races_cancel, 8),
    (charge_races_charge, 4),
    (cancelled, 4),
    (left_authorized, 3),
    (declined_then_retried, 4),
    (invoice_race, 5),
    (saved_card_elsewhere, 3),
    (one_card_saved_on_three_servers_at_once, 2),
    (secure3d_across_servers, 4),
    (secure3d_abandoned, 2),
]
ONE_STEP_ORDERS: list[tuple[Callable[[Shopper, Shop], None], int]] = [
    (one_step_refunds_race, 8),
    (idempotent_refund_race, 6),
    (one_step_kept, 3),
    (one_card_saved_on_three_servers_at_once, 1),
    (declined_then_retried, 3),
    (invoice_race, 4),
    (secure3d_across_servers, 2),
    (secure3d_abandoned, 1),
]


# --- reading the database --------------------------------------------------------------


def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def undelivered(database_url: str) -> int:
    [(n,)] = query(database_url, "SELECT count(*) FROM notifications WHERE state <> 'delivered'")
    return int(n)


def alembic_config_for_head() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


# --- the test --------------------------------------------------------------------------


def test_three_servers_and_two_workers_behave_as_one_gateway(cluster: Cluster) -> None:
    started = time.monotonic()
    print(f"\nseed {SEED} (TOLEM_SCALE_OUT_SEED={SEED} repeats the plan)")
    servers = cluster.servers
    db = cluster.database_url

    # The three migrated the empty database once, to the newest revision.
    scripts = ScriptDirectory.from_config(alembic_config_for_head())
    assert [r.version_num for r in query(db, "SELECT version_num FROM alembic_version")] == [
        scripts.get_current_head()
    ]
    [(merchants,)] = query(db, "SELECT count(*) FROM merchants WHERE client_id = :c", c=CLIENT_ID)
    assert merchants == 1

    # Every server serves the same key (they generated it racing each other).
    pems = {s.client.get("/public.rsa").content for s in servers}
    assert len(pems) == 1, "the servers serve different cryptogram keys"
    key = serialization.load_pem_public_key(pems.pop())
    assert isinstance(key, rsa.RSAPublicKey)
    cluster.public_key = key

    # A one-step merchant made by another process while the servers run; both merchants
    # sign their postLinks (the secret is sealed under the shared card key).
    made = json.loads(
        cluster.cli("merchant", "create", "--name", "Scale-out", "--one-step", "--json")
    )
    shops = [
        Shop(
            CLIENT_ID,
            CLIENT_SECRET,
            TERMINAL,
            one_step=False,
            signing_secret=cluster.cli("merchant", "signing", CLIENT_ID).strip(),
        ),
        Shop(
            made["clientId"],
            made["clientSecret"],
            made["terminalId"],
            one_step=True,
            signing_secret=cluster.cli("merchant", "signing", made["clientId"]).strip(),
        ),
    ]
    told = Told()
    service_tokens: dict[str, str] = {}
    for i, shop in enumerate(shops):  # a token of one server works on every other
        form = {
            "grant_type": "client_credentials",
            "scope": "webapi payment",
            "client_id": shop.client_id,
            "client_secret": shop.client_secret,
            "terminal": shop.terminal,
        }
        answer = told.answered(servers[i % SERVERS].client.post("/oauth2/token", data=form))
        assert answer.status_code == 200, answer.text
        service_tokens[shop.client_id] = answer.json()["access_token"]

    plan = random.Random(SEED)
    orders = [(fn, shops[0]) for fn, n in TWO_STEP_ORDERS for _ in range(n * ROUNDS)]
    orders += [(fn, shops[1]) for fn, n in ONE_STEP_ORDERS for _ in range(n * ROUNDS)]
    plan.shuffle(orders)
    seeds = [plan.randrange(2**32) for _ in orders]

    def run(i: int) -> None:
        fn, shop = orders[i]
        shopper = Shopper(cluster, told, random.Random(seeds[i]), service_tokens)
        fn(shopper, shop)

    drive_started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = [pool.submit(run, i) for i in range(len(orders))]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # fail now: the orders not begun never run
            raise
    drive_seconds = time.monotonic() - drive_started
    expiry_started = time.monotonic()
    cluster.check_alive()

    # --- abandoned 3-D Secure challenges: failed once, by whichever sweeper came first ---
    abandoned = set(told.abandoned)
    deadline = time.monotonic() + SECURE3D_TIMEOUT + 30

    def still_new() -> set[str]:
        rows = query(db, "SELECT id FROM transactions WHERE status = 'NEW'")
        return {r.id for r in rows}

    while still_new() and time.monotonic() < deadline:
        cluster.check_alive()
        time.sleep(0.2)
    assert still_new() == set(), "a 3-D Secure payment outlived its time limit"
    for tx, (shop, invoice) in told.abandoned.items():
        told.declined[tx] = (shop, invoice, 473, "3D")

    # --- every postLink delivered, by the two workers ---------------------------------
    deadline = time.monotonic() + 60
    while undelivered(db) and time.monotonic() < deadline:
        cluster.check_alive()
        time.sleep(0.1)
    assert undelivered(db) == 0, (
        query(db, "SELECT state, last_error, count(*) FROM notifications GROUP BY 1, 2"),
        cluster.logs(),
    )
    delivery_seconds = time.monotonic() - expiry_started

    # Every server tells every payment's final state as the shop was told it.
    for shop in shops:
        headers = {"Authorization": f"Bearer {service_tokens[shop.client_id]}"}
        for tx, (owner, invoice, _, _) in told.paid.items():
            if owner is not shop:
                continue
            payout = told.charged.get(tx, Decimal(0)) - told.refunded.get(tx, Decimal(0))
            for server in servers:
                answer = told.answered(
                    server.client.get(
                        f"/check-status/payment/transaction/{invoice}", headers=headers
                    )
                )
                found = as_json(answer)["transaction"]
                assert (found["id"], found["statusName"], found["payoutAmount"]) == (
                    tx,
                    told.expected_status(tx),
                    payout,
                ), (server.name, found)
                told.status_checks += 1
        for tx, (owner, invoice, _, status) in told.declined.items():
            if owner is not shop or tx not in abandoned:  # (a retry took the others' invoice)
                continue
            answer = told.answered(
                servers[len(invoice) % SERVERS].client.get(
                    f"/check-status/payment/transaction/{invoice}", headers=headers
                )
            )
            found = as_json(answer)["transaction"]
            assert (found["id"], found["statusName"], found["reasonCode"]) == (tx, status, 473)
            told.status_checks += 1

    stop_seconds = [stop(p) for p in cluster.workers] + [stop(p) for p in servers]
    for p in cluster.workers:
        assert p.process.returncode == 0, (p.name, p.process.returncode, p.log_text()[-6000:])
    for p in servers:  # uvicorn shuts down gracefully, then re-raises the signal
        assert p.process.returncode in (0, -signal.SIGTERM), (p.name, p.process.returncode)
        assert "Finished server process" in p.log_text(), p.log_text()[-6000:]
    for p in cluster.processes():
        assert "Traceback" not in p.log_text(), p.log_text()
    for p in servers:  # their own delivery is off: the workers sent every postLink
        assert not DELIVERED_LINE.search(p.log_text()), p.name

    # --- the payments: what the shop was told is what the database holds ---------------
    rows = {
        r.id: r
        for r in query(
            db,
            "SELECT id, terminal_id, invoice_id, invoice_claim, status, reason_code, amount,"
            " amount_charged, amount_refunded, amount_refund_pending, operation_lock"
            " FROM transactions",
        )
    }
    assert set(rows) == set(told.paid) | set(told.declined), "a payment lost or unknown"
    assert [r.id for r in rows.values() if r.status == "NEW"] == []
    for tx, (shop, invoice, amount, _) in told.paid.items():
        row = rows[tx]
        charged, refunded = money(row.amount_charged), money(row.amount_refunded)
        assert (row.terminal_id, row.invoice_id, money(row.amount)) == (
            shop.terminal,
            invoice,
            amount,
        )
        assert row.status == told.expected_status(tx), (tx, row, told.expected_status(tx))
        # Never charged more than authorized, never refunded more than charged.
        assert Decimal(0) <= charged <= amount, row
        assert Decimal(0) <= refunded <= charged, row
        assert (charged, refunded) == (told.charged.get(tx, 0), told.refunded.get(tx, 0)), row
        assert money(row.amount_refund_pending) == 0 and row.operation_lock is None, row
        if row.status == "CANCEL":
            assert charged == 0
        if row.status == "REFUND":
            assert refunded == charged > 0
    for tx, (_, _, code, status) in told.declined.items():
        assert (rows[tx].status, rows[tx].reason_code, rows[tx].invoice_claim) == (
            status,
            code,
            None,
        )
    # No invoice paid twice on a terminal (the raced ones included).
    taken = Counter((r.terminal_id, r.invoice_id) for r in rows.values() if r.status in SUCCEEDED)
    assert [k for k, n in taken.items() if n > 1] == []
    raced = [r for r in rows.values() if r.invoice_id in set(told.invoice_races)]
    assert len(raced) == len(told.invoice_races)

    # One saved card per customer and card, none left pending.
    cards = query(db, "SELECT merchant_id, account_id, card_fingerprint, state FROM saved_cards")
    assert {c.state for c in cards} <= {"active"}, Counter(c.state for c in cards)
    owners = Counter((c.merchant_id, c.account_id, c.card_fingerprint) for c in cards)
    assert [o for o, n in owners.items() if n > 1] == [], "one card saved twice"

    # Totals, as Decimal sums: from the database and from the API's answers.
    db_charged = sum((money(r.amount_charged) for r in rows.values()), Decimal(0))
    db_refunded = sum((money(r.amount_refunded) for r in rows.values()), Decimal(0))
    assert db_charged == sum(told.charged.values(), Decimal(0))
    assert db_refunded == sum(told.refunded.values(), Decimal(0))

    # --- the operations ------------------------------------------------------------------
    ops = query(db, "SELECT id, transaction_id, kind, amount, state FROM operations")
    assert {o.state for o in ops} <= {"done"}, Counter(o.state for o in ops)
    assert {o.id: (o.transaction_id, o.kind, money(o.amount)) for o in ops} == told.operations
    per_tx: dict[str, Counter[str]] = defaultdict(Counter)
    for o in ops:
        per_tx[o.transaction_id][o.kind] += 1
    for tx, kinds in per_tx.items():
        # A charge racing a cancel or another charge: one of them, and none on one-step.
        assert kinds["charge"] + kinds["cancel"] <= (0 if told.paid[tx][0].one_step else 1), tx

    # --- the simulator's ledger agrees with the gateway --------------------------------
    ledger = query(
        db,
        "SELECT reference, kind, auth_reference, amount, approved, reason_code"
        " FROM simulator_ledger WHERE kind NOT LIKE '3ds-%'",
    )
    by_ref = {e.reference.removesuffix("/3ds"): e for e in ledger}
    assert len(by_ref) == len(ledger), "two ledger rows for one reference"
    # Every payment and operation asked the simulator once, except abandoned 3-D Secure
    # payments: nothing was settled for them (only the challenge's pending row).
    assert set(by_ref) == (set(rows) - abandoned) | {o.id for o in ops}, "ledger and gateway differ"
    pending_3ds = query(db, "SELECT reference FROM simulator_ledger WHERE kind LIKE '3ds-%'")
    assert abandoned <= {r.reference for r in pending_3ds}
    moved: dict[str, Counter[str]] = defaultdict(Counter)
    sums: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    shop_of = {tx: v[0] for tx, v in told.paid.items()} | {
        tx: v[0] for tx, v in told.declined.items()
    }
    for ref, entry in by_ref.items():
        if ref in rows:  # the payment itself
            row = rows[ref]
            want = "sale" if shop_of[ref].one_step else "authorize"
            assert (entry.kind, money(entry.amount)) == (want, money(row.amount)), (entry, row)
            assert entry.approved == (row.status in SUCCEEDED), (entry, row)
            assert entry.reason_code == row.reason_code, (entry, row)
            continue
        op = next(o for o in ops if o.id == ref)
        kind = {"charge": "capture", "cancel": "void", "refund": "refund"}[op.kind]
        assert (entry.kind, entry.auth_reference, entry.approved) == (kind, op.transaction_id, True)
        if kind != "void":
            assert money(entry.amount) == money(op.amount), (entry, op)
        moved[op.transaction_id][kind] += 1
        sums[op.transaction_id, kind] += money(entry.amount)
    for tx, row in rows.items():
        if row.status not in SUCCEEDED:
            assert not moved[tx], (tx, moved[tx])
            continue
        one_step = told.paid[tx][0].one_step
        captured = money(row.amount) if one_step else sums[tx, "capture"]
        assert moved[tx]["capture"] + moved[tx]["void"] <= (0 if one_step else 1), moved[tx]
        assert captured == money(row.amount_charged), (tx, captured, row)
        assert sums[tx, "refund"] == money(row.amount_refunded) <= captured, (tx, row)

    # --- the postLinks -------------------------------------------------------------------
    notes = query(
        db,
        "SELECT n.id, n.transaction_id, n.event, n.url, n.body, n.state, n.attempts,"
        " m.client_id FROM notifications n JOIN merchants m ON m.id = n.merchant_id",
    )
    events: dict[str, list[str]] = defaultdict(list)
    for n in notes:
        events[n.transaction_id].append(n.event)
    for tx in rows:
        want = ["payment", *(o.kind for o in ops if o.transaction_id == tx)]
        assert sorted(events[tx]) == sorted(want), (tx, events[tx], want)
    secrets_by_client = {shop.client_id: shop.signing_secret for shop in shops}
    by_id = {n.id: n for n in notes}
    with cluster.receiver._lock:
        received = list(cluster.receiver.requests)
    counts: Counter[str] = Counter()
    for r in received:
        note = by_id.get(r.headers.get("webhook-id", ""))
        assert note is not None, ("a postLink nobody wrote", r.path, r.headers)
        assert r.body == note.body.encode(), "the body differs from the one stored"
        assert cluster.receiver.url(r.path) == note.url
        Webhook(secrets_by_client[note.client_id]).verify(r.body, r.headers)
        counts[note.id] += 1
    assert set(counts) == set(by_id), "a postLink never arrived"
    duplicates = {nid: n - 1 for nid, n in counts.items() if n > 1}
    # postLinks of one payment are sent side by side by two workers: count the payments
    # whose postLinks first arrived in another order than they were written (allowed:
    # each body carries its dateTime; reported, not asserted).
    first_seen: dict[str, float] = {}
    for r in received:
        first_seen.setdefault(r.headers["webhook-id"], r.at)
    written = query(db, "SELECT id, transaction_id FROM notifications ORDER BY created_at, id")
    order_of: dict[str, list[str]] = defaultdict(list)
    for n in written:
        order_of[n.transaction_id].append(n.id)
    several = [ids for ids in order_of.values() if len(ids) > 1]
    out_of_order = sum(ids != sorted(ids, key=first_seen.__getitem__) for ids in several)
    for nid in duplicates:
        # A duplicate needs a second attempt (one whose answer was lost or late).
        assert counts[nid] <= by_id[nid].attempts, (nid, counts[nid], by_id[nid])
    attempts = query(db, "SELECT outcome, count(*) FROM delivery_attempts GROUP BY outcome")
    outcomes = {o: int(n) for o, n in attempts}
    assert outcomes.get("delivered") == len(notes), outcomes
    # No process died: an attempt "interrupted" would mean two workers claimed one
    # postLink at once; a retry only follows an answer that was not a 2xx in time.
    assert set(outcomes) <= {"delivered", "retry"}, outcomes
    lags = sorted(
        (r.delivered_at - r.created_at).total_seconds()
        for r in query(db, "SELECT created_at, delivered_at FROM notifications")
    )

    per_worker: dict[str, int] = {}
    logged: set[str] = set()
    for worker in cluster.workers:
        lines = list(DELIVERED_LINE.finditer(worker.log_text()))
        assert {int(m["pid"]) for m in lines} <= {worker.process.pid}
        per_worker[worker.name] = len(lines)
        logged |= {m["id"] for m in lines}
    assert logged == {redact(n.id) for n in notes}
    assert all(per_worker.values()), f"a worker delivered nothing: {per_worker}"

    kinds = Counter(k for _, k, _ in told.operations.values())
    payments = len(told.paid) + len(told.declined)
    print(
        f"servers {SERVERS}, workers {WORKERS}, orders {len(orders)} ({PARALLEL} at once); "
        f"payments {payments} ({len(told.paid)} approved, {len(told.declined)} declined, "
        f"{len(told.invoice_races)} invoices raced on two servers, "
        f"{len(abandoned)} abandoned in 3-D Secure and failed by a sweeper); "
        f"operations performed {len(told.operations)} {dict(kinds)}, refused {dict(told.refused)}, "
        f"idempotent replays {told.idempotent_replays}; saved cards {len(cards)}; "
        f"status checks {told.status_checks}; "
        f"charged {db_charged} KZT, refunded {db_refunded} KZT; "
        f"postLinks {len(notes)}, requests received {len(received)}, "
        f"duplicates {sum(duplicates.values())} ({len(duplicates)} postLinks), "
        f"payments whose postLinks arrived out of order {out_of_order} of {len(several)}, "
        f"attempts {outcomes}; deliveries per worker {per_worker}; "
        f"HTTP answers {dict(sorted(told.statuses.items()))}; "
        f"postLink lag (written to delivered) median {lags[len(lags) // 2]:.2f} s, "
        f"max {lags[-1]:.2f} s; drive {drive_seconds:.1f} s, then {delivery_seconds:.1f} s "
        f"until the abandoned payments had expired and every postLink was delivered, "
        f"polite stops {max(stop_seconds):.1f} s at most; "
        f"whole test {time.monotonic() - started:.1f} s"
    )
