"""postLink delivery under real process failures: ``tolem worker`` processes are killed,
stopped politely and run side by side against one database, on SQLite and PostgreSQL.

Every test gets its own gateway (``tolem serve`` with no in-process delivery) on an
empty database, so each notification row in it belongs to the test; delivery comes only
from the ``tolem worker`` processes the test starts. Every postLink and failurePostLink
points at the local receiver: nothing leaves this machine (checked before any worker
starts).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import fresh_postgres
from tests.receiver import Received, Receiver, running_receiver
from tests.support import (
    Gateway,
    cryptopay,
    new_invoice,
    payment_body,
    query,
    start_gateway,
    token,
)
from tolem.logs import redact

APPROVED = ("4405639704015096", "0125", "815")
DECLINED = [("4003032704547597", "0920", "170"), ("5578342710750560", "0920", "254")]

#: The timeout the workers run with; their lease is 2 * timeout + 1 seconds.
TIMEOUT = 1.0
LEASE = 2 * TIMEOUT + 1

# "<time> INFO tolem.notifications <pid> postLink <id> attempt <n>: 200 (<ms> ms) delivered"
DELIVERED_LINE = re.compile(
    r"tolem\.notifications (?P<pid>\d+) postLink (?P<id>\S+) attempt (?P<n>\d+): "
    r"(?P<status>2\d\d) \(\d+ ms\) delivered"
)


# --- a gateway of one's own, on each backend -------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def own_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    """``tolem serve`` on an empty database that no other test writes to."""
    data_dir = tmp_path / "gateway"
    data_dir.mkdir()
    if request.param == "sqlite":
        with start_gateway(data_dir, f"sqlite:///{tmp_path / 'tolem.db'}") as gw:
            yield gw
        return
    with fresh_postgres("tolem_notify") as url, start_gateway(data_dir, url) as gw:
        yield gw


def backend_of(gw: Gateway) -> str:
    return "sqlite" if gw.database_url.startswith("sqlite") else "postgresql"


# --- worker processes ------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def delivering(self) -> bool:
        """Whether it has started (its log says so: tolem.cli.notifications)."""
        return "tolem worker delivering postLinks" in self.log_text()

    def cpu_seconds(self) -> float | None:
        """CPU time the process has used so far (Linux), to tell a busy loop from a wait."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Workers:
    """Starts ``tolem worker`` processes for one gateway; kills any left at the end."""

    gw: Gateway
    log_dir: Path
    receiver: Receiver
    started: list[Worker] = field(default_factory=list)

    def start(self, **extra_env: str) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLEM_")}
        env |= {
            "TOLEM_DATA_DIR": str(self.gw.data_dir),  # the gateway's keys
            "TOLEM_DATABASE_URL": self.gw.database_url,
            "TOLEM_POSTLINK_TIMEOUT": f"{TIMEOUT:g}",
            "TOLEM_POSTLINK_RETRY_SCHEDULE": "0.2,0.2,0.2,0.2,0.2",
            "TOLEM_POSTLINK_POLL_INTERVAL": "0.05",
            "TOLEM_LOG_LEVEL": "info",
            **extra_env,
        }
        log_path = self.log_dir / f"worker-{len(self.started) + 1}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tolem", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(process, log_path)
        self.started.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(
            f"--- {w.log_path.name} (pid {w.pid})\n{w.log_text()}" for w in self.started
        )

    def explain(self) -> str:
        """Where delivery stands, for a failure message."""
        lines = [
            f"receiver got {len(self.receiver.requests)} requests; "
            f"notifications not delivered: {pending(self.gw)}; attempts: {dict(outcomes(self.gw))}"
        ]
        for w in self.started:
            if w.alive():
                lines.append(f"worker {w.pid} running, {w.cpu_seconds()} s of CPU used")
        return "\n".join(lines) + "\n" + self.logs()


@contextmanager
def workers_for(gw: Gateway, log_dir: Path, receiver: Receiver) -> Iterator[Workers]:
    workers = Workers(gw, log_dir, receiver)
    try:
        yield workers
    finally:
        for worker in workers.started:  # only the processes this test started
            if worker.alive():
                worker.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=10)


def stop_politely(worker: Worker, sig: int = signal.SIGTERM, timeout: float = 10) -> float:
    """Send ``sig``; the seconds the worker took to exit (fails after ``timeout``)."""
    started = time.monotonic()
    worker.process.send_signal(sig)
    try:
        worker.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"worker {worker.pid} still running {timeout} s after signal {sig}:\n"
            + worker.log_text()
        ) from None
    return time.monotonic() - started


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: list[Worker] | None = None,
    explain: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``predicate`` with short sleeps; fail after ``timeout`` or if a worker died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for worker in alive or []:
            if not worker.alive():
                raise AssertionError(
                    f"worker {worker.pid} exited ({worker.process.returncode}) while "
                    f"waiting for {what}:\n{worker.log_text()}"
                )
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{explain()}")


# --- payments and what became of their postLinks ---------------------------------------


def take_payments(gw: Gateway, count: int, link: Callable[[str], str]) -> list[str]:
    """``count`` payments, one in three declined; the postLinks go to ``link(invoice)``."""

    def one(i: int) -> str:
        invoice = new_invoice()
        card = DECLINED[(i // 3) % 2] if i % 3 == 0 else APPROVED
        url = link(invoice)
        with gw.client() as client:
            tok = token(client, invoice=invoice, amount=100)
            body = payment_body(gw, invoice, card=card, postLink=url, failurePostLink=url + "/fail")
            response = cryptopay(client, tok["access_token"], body)
        assert response.status_code == (400 if card != APPROVED else 200), response.text
        return str(response.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


@dataclass(frozen=True)
class Row:
    id: str
    transaction_id: str
    url: str
    state: str
    attempts: int


def notifications(gw: Gateway) -> list[Row]:
    return [
        Row(*r)
        for r in query(
            gw.database_url, "SELECT id, transaction_id, url, state, attempts FROM notifications"
        )
    ]


def pending(gw: Gateway) -> int:
    rows = query(gw.database_url, "SELECT count(*) FROM notifications WHERE state <> 'delivered'")
    return int(rows[0][0])


def attempts_by_transaction(gw: Gateway) -> dict[str, list[tuple[int, str, str]]]:
    """transaction id -> its attempts as (number, outcome, error), in order."""
    result: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for tx_id, number, outcome, error in query(
        gw.database_url,
        "SELECT n.transaction_id, a.number, a.outcome, a.error FROM delivery_attempts a "
        "JOIN notifications n ON n.id = a.notification_id ORDER BY a.number",
    ):
        result[tx_id].append((number, outcome, error or ""))
    return result


def outcomes(gw: Gateway) -> Counter[str]:
    rows = query(
        gw.database_url, "SELECT outcome, count(*) FROM delivery_attempts GROUP BY outcome"
    )
    return Counter({outcome: int(n) for outcome, n in rows})


def complete(request: Received) -> bool:
    """The whole body arrived (a worker killed while sending leaves a part of it)."""
    return len(request.body) == int(request.headers.get("content-length") or -1)


def received_ids(receiver: Receiver) -> Counter[str]:
    """How many times the receiver got each transaction's whole postLink (the body's id)."""
    with receiver._lock:
        requests = list(receiver.requests)
    return Counter(str(r.json()["id"]) for r in requests if complete(r))


def truncated(receiver: Receiver) -> int:
    with receiver._lock:
        return sum(not complete(r) for r in receiver.requests)


def payments_for_receiver(gw: Gateway, receiver: Receiver, count: int, kind: str) -> list[Row]:
    """Take ``count`` payments whose postLinks go to ``/<kind>/<invoice>``; their rows."""
    tx_ids = take_payments(gw, count, lambda invoice: receiver.url(f"/{kind}/{invoice}"))
    rows = notifications(gw)
    assert sorted(r.transaction_id for r in rows) == sorted(tx_ids)
    # Nothing may leave this machine: every link is the local receiver's.
    off_machine = [r.url for r in rows if not r.url.startswith(receiver.base_url + "/")]
    assert not off_machine, off_machine
    assert {r.state for r in rows} == {"pending"}
    return rows


# --- 0. a worker whose every slot is taken --------------------------------------------


@pytest.mark.timeout(60)
def test_worker_with_every_slot_taken_keeps_delivering(
    own_gateway: Gateway, tmp_path: Path
) -> None:
    """More postLinks due than a worker sends at once: it sends them all, and stops.

    The first claim fills every slot (``TOLEM_POSTLINK_CONCURRENCY``); the worker must
    still let those attempts run and answer a polite stop. The tests below depend on it
    (16 slots, 40 to 150 postLinks).
    """
    gw = own_gateway
    with running_receiver() as receiver, workers_for(gw, tmp_path, receiver) as workers:
        rows = payments_for_receiver(gw, receiver, 3, "ok")
        worker = workers.start(TOLEM_POSTLINK_CONCURRENCY="2")
        wait_until(
            lambda: pending(gw) == 0,
            timeout=15,
            what="3 postLinks delivered by a worker that sends 2 at once",
            alive=[worker],
            explain=workers.explain,
        )
        seconds = stop_politely(worker)
        assert worker.process.returncode == 0, worker.log_text()
        assert seconds < 5
    assert received_ids(receiver) == Counter({r.transaction_id: 1 for r in rows})
    assert outcomes(gw) == Counter({"delivered": 3})
    assert truncated(receiver) == 0


# --- 1. at least once across SIGKILL ---------------------------------------------------

#: When to SIGKILL each worker: once it has sent this many new requests, after this
#: many seconds more. The receiver holds each answer for SLOW seconds, so the moments
#: fall before any answer, while answers arrive and are recorded, and between waves.
KILL_PLAN = [(1, 0.0), (1, 0.72), (1, 1.1), (4, 0.4)]
SLOW = 0.7


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_postlinks_arrive_at_least_once_across_sigkill(
    own_gateway: Gateway, tmp_path: Path
) -> None:
    gw = own_gateway
    with (
        running_receiver(slow_seconds=SLOW) as receiver,
        workers_for(gw, tmp_path, receiver) as workers,
    ):
        rows = payments_for_receiver(gw, receiver, 40, "slow")
        total = len(rows)
        kills = 0
        for new_requests, delay in KILL_PLAN:
            before = len(receiver.requests)
            worker = workers.start()
            wait_until(
                lambda: len(receiver.requests) >= before + new_requests or pending(gw) == 0,  # noqa: B023
                timeout=LEASE + 15,
                what=f"{new_requests} new postLink requests",
                alive=[worker],
                explain=workers.explain,
            )
            time.sleep(delay)
            work_left = pending(gw)
            os.kill(worker.pid, signal.SIGKILL)
            worker.process.wait(timeout=10)
            assert worker.process.returncode == -signal.SIGKILL
            if work_left:  # some delivered, not all: a kill in the middle of the work
                kills += 1
        assert kills >= 3, f"only {kills} kills happened before every postLink was delivered"

        final = workers.start()
        wait_until(
            lambda: pending(gw) == 0,
            timeout=LEASE + 30,
            what="every postLink delivered",
            alive=[final],
            explain=workers.explain,
        )
        stop_politely(final)
        log_text = workers.logs()

    rows = notifications(gw)
    assert len(rows) == total
    assert {r.state for r in rows} == {"delivered"}, Counter(r.state for r in rows)
    received = received_ids(receiver)
    assert set(received) == {r.transaction_id for r in rows}
    attempts = attempts_by_transaction(gw)
    # A worker that died left its attempts "sending"; claiming the row again marked them
    # interrupted, and every row had to be claimed again to be delivered.
    assert "sending" not in outcomes(gw), outcomes(gw)
    for row in rows:
        tried = attempts[row.transaction_id]
        assert len(tried) == row.attempts, (row, tried)
        assert [o for _, o, _ in tried].count("delivered") == 1, tried
        assert tried[-1][1] == "delivered", tried
        # Every request the receiver got came from an attempt.
        assert received[row.transaction_id] <= len(tried), (row, tried)

    duplicates = {tx: n for tx, n in received.items() if n > 1}
    timed_out = 0
    for tx, n in duplicates.items():
        tried = attempts[tx]
        # A duplicate only for an attempt whose answer the worker never read: one cut
        # off by a SIGKILL (interrupted), or, on a loaded machine, by the time-out.
        cut_off = [a for a in tried if a[1] == "interrupted"]
        late = [a for a in tried if a[1] == "retry" and "timed out" in a[2]]
        timed_out += bool(late and not cut_off)
        assert cut_off or late, f"{tx} received {n} times, no attempt was cut off: {tried}"
        assert n - 1 <= len(cut_off) + len(late), (tx, n, tried)
    # A row that no kill (nor time-out) touched was received exactly once.
    for tx, tried in attempts.items():
        if not any(o == "interrupted" or "timed out" in e for _, o, e in tried):
            assert received[tx] == 1, (tx, received[tx], tried)
    print(
        f"\n[{backend_of(gw)}] SIGKILLs survived: {kills}; postLinks: {total}; "
        f"requests received: {sum(received.values())}; duplicates: {len(duplicates)} "
        f"({sum(duplicates.values()) - len(duplicates)} extra requests, {timed_out} after a "
        f"time-out alone); received once: {total - len(duplicates)}; "
        f"bodies cut off by a kill: {truncated(receiver)}; "
        f"attempts: {dict(outcomes(gw))}"
    )
    assert "Traceback" not in log_text, log_text


# --- 2. several workers never send the same attempt at once ----------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_three_workers_deliver_each_postlink_exactly_once(
    own_gateway: Gateway, tmp_path: Path
) -> None:
    gw = own_gateway
    with running_receiver() as receiver, workers_for(gw, tmp_path, receiver) as workers:
        backlog = payments_for_receiver(gw, receiver, 75, "ok")
        running = [workers.start() for _ in range(3)]
        # All three compete only once all three run (a loaded machine starts them slowly).
        wait_until(
            lambda: all(w.delivering() for w in running),
            timeout=30,
            what="three workers started",
            alive=running,
            explain=workers.explain,
        )
        # More arrive while the three compete for the backlog.
        take_payments(gw, 75, lambda invoice: receiver.url(f"/ok/{invoice}"))
        rows = notifications(gw)
        assert len(rows) == 150 and len(backlog) == 75
        assert all(r.url.startswith(receiver.base_url + "/") for r in rows)
        wait_until(
            lambda: pending(gw) == 0,
            timeout=40,
            what="150 postLinks delivered",
            alive=running,
            explain=workers.explain,
        )
        for worker in running:
            stop_politely(worker)
            assert worker.process.returncode == 0, worker.log_text()
        logs = {w.pid: w.log_text() for w in running}

    rows = notifications(gw)
    assert len(rows) == 150
    assert {r.state for r in rows} == {"delivered"}
    assert [r for r in rows if r.attempts != 1] == []
    assert outcomes(gw) == Counter({"delivered": 150})
    received = received_ids(receiver)
    assert set(received) == {r.transaction_id for r in rows}
    assert {tx: n for tx, n in received.items() if n != 1} == {}
    assert truncated(receiver) == 0

    by_worker: dict[int, list[str]] = {}
    for pid, text in logs.items():
        assert "Traceback" not in text, text
        lines = [m for m in DELIVERED_LINE.finditer(text)]
        assert {int(m["pid"]) for m in lines} <= {pid}, "a log line names another process"
        by_worker[pid] = [m["id"] for m in lines]
    delivered_ids = [n for ids in by_worker.values() for n in ids]
    # The log's redaction masks a UUID whose last group is 12 digits passing Luhn.
    assert Counter(delivered_ids) == Counter(redact(r.id) for r in rows)
    busy = {pid: len(ids) for pid, ids in by_worker.items() if ids}
    print(f"\n[{backend_of(gw)}] deliveries per worker process: {busy}")
    assert len(busy) > 1, f"only one worker delivered: {busy}"


# --- 3. a polite stop ------------------------------------------------------------------


def test_worker_stopped_while_starting_exits_cleanly(own_gateway: Gateway, tmp_path: Path) -> None:
    """SIGTERM while the worker still starts (here: waiting for the database) ends it
    at once with exit code 0, not with a death by the signal."""
    gw = own_gateway
    with (
        running_receiver() as receiver,
        workers_for(gw, tmp_path, receiver) as workers,
        database_held(gw) as waiting_for_it,
    ):
        worker = workers.start()
        wait_until(
            lambda: waiting_for_it(worker.pid),
            timeout=30,
            what="the worker waiting for the database",
            alive=[worker],
            explain=workers.explain,
        )
        assert not worker.delivering()
        seconds = stop_politely(worker)
        assert worker.process.returncode == 0, worker.log_text()
        assert seconds < 5
        assert "stopped before it started delivering" in worker.log_text()
        assert "Traceback" not in worker.log_text()


@contextmanager
def database_held(gw: Gateway) -> Iterator[Callable[[int], bool]]:
    """Hold the gateway database's writer slot; yields "is process ``pid`` waiting for it?"

    SQLite: the lock file every writer of the database takes first (tolem.db.engine);
    a process waits for it with the file open. PostgreSQL: the schema lock every
    migrator takes (tolem.db.migrate); a waiting process shows in pg_stat_activity.
    """
    if backend_of(gw) == "sqlite":
        path = gw.database_url.removeprefix("sqlite:///") + "-writer.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)

            def opened(pid: int) -> bool:
                fds = Path(f"/proc/{pid}/fd")
                with contextlib.suppress(OSError):
                    return any(os.readlink(link) == path for link in fds.iterdir())
                return False

            yield opened
        finally:
            os.close(fd)
        return
    import psycopg

    from tolem.db.migrate import SCHEMA_LOCK

    url = gw.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
        holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))

        def waiting(pid: int) -> bool:
            # A backend of the worker's (its client port belongs to pid) waiting on a lock.
            rows = watcher.execute(
                "SELECT client_port FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
            ).fetchall()
            ports = {row[0] for row in rows}
            return bool(ports & _client_ports(pid))

        yield waiting


def _client_ports(pid: int) -> set[int]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")}
    return set()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_worker_stops_politely_mid_delivery_and_a_restart_finishes(
    own_gateway: Gateway, tmp_path: Path
) -> None:
    gw = own_gateway
    slow = 0.4  # well inside TIMEOUT: a loaded machine must not turn it into a retry
    with (
        running_receiver(slow_seconds=slow) as receiver,
        workers_for(gw, tmp_path, receiver) as workers,
    ):
        rows = payments_for_receiver(gw, receiver, 24, "slow")
        stops: list[tuple[str, float, int]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            before = len(receiver.requests)
            # Four at a time, so that work is left after each stop.
            worker = workers.start(TOLEM_POSTLINK_CONCURRENCY="4")
            wait_until(
                lambda: len(receiver.requests) > before,  # noqa: B023
                timeout=15,
                what="a postLink in flight",
                alive=[worker],
                explain=workers.explain,
            )
            time.sleep(0.2)  # the receiver holds the answers for `slow` seconds
            in_flight = outcomes(gw)["sending"]
            assert in_flight > 0, outcomes(gw)
            assert pending(gw) > 0
            seconds = stop_politely(worker, sig)
            stops.append((signal.Signals(sig).name, seconds, in_flight))
            assert worker.process.returncode == 0, worker.log_text()
            # It let the attempts under way finish and recorded them...
            assert seconds < TIMEOUT + 1 + 2, f"{sig!r} took {seconds:.1f} s"
            assert "sending" not in outcomes(gw), outcomes(gw)
            # ... so everything the receiver got so far is delivered, and nothing more
            # was sent after the signal.
            delivered = {r.transaction_id for r in notifications(gw) if r.state == "delivered"}
            assert set(received_ids(receiver)) == delivered
            assert pending(gw) > 0, "no work left to restart with"

        final = workers.start()
        wait_until(
            lambda: pending(gw) == 0,
            timeout=30,
            what="every postLink delivered",
            alive=[final],
            explain=workers.explain,
        )
        stop_politely(final)
        log_text = workers.logs()

    rows = notifications(gw)
    assert {r.state for r in rows} == {"delivered"}
    received = received_ids(receiver)
    assert set(received) == {r.transaction_id for r in rows}
    # A polite stop never makes a duplicate: nothing was interrupted.
    assert {tx: n for tx, n in received.items() if n != 1} == {}
    assert outcomes(gw) == Counter({"delivered": len(rows)})
    assert truncated(receiver) == 0
    assert "Traceback" not in log_text, log_text
    print(f"\n[{backend_of(gw)}] polite stops (signal, seconds, attempts in flight): {stops}")
