"""SQLite writers of several processes queue on a lock file beside the database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.support import cryptopay, new_invoice, pay, payment_body, start_gateway, token
from tolem.db.engine import Database, WouldBlock
from tolem.merchants.service import SANDBOX_TERMINAL_ID

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'w.db'}")
    with database.write() as session:
        session.execute(text("CREATE TABLE t (n INTEGER)"))
    yield database
    database.dispose()


def _hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    line = holder.stdout.readline().strip()
    holder.stdout.close()
    assert line == "held"
    return holder


def test_the_lock_file_sits_beside_the_database(db: Database, tmp_path: Path) -> None:
    assert (tmp_path / "w.db-writer.lock").exists()


def test_a_writer_waits_for_another_process_then_writes(db: Database, tmp_path: Path) -> None:
    holder = _hold(tmp_path / "w.db-writer.lock", 0.6)
    try:
        started = time.monotonic()
        with db.write() as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
        waited = time.monotonic() - started
    finally:
        holder.wait(10)
    assert 0.3 < waited < 5
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 1


def test_a_writer_gives_up_like_sqlite_after_the_timeout(db: Database, tmp_path: Path) -> None:
    assert db._writer is not None
    db._writer.timeout = 0.3
    holder = _hold(tmp_path / "w.db-writer.lock", 3)
    try:
        with pytest.raises(OperationalError, match="database is locked"), db.write() as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
        # The process's own lock was let go: the next writer gets in once the file is free.
        holder.wait(10)
        with db.write() as session:
            session.execute(text("INSERT INTO t VALUES (2)"))
    finally:
        holder.kill()
        holder.wait(10)
    with db.read() as session:
        assert session.execute(text("SELECT n FROM t")).scalars().all() == [2]


TRY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("taken")
"""


def _state(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", TRY, str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_file_lock_is_held_until_the_outermost_write_ends(db: Database, tmp_path: Path) -> None:
    lock = tmp_path / "w.db-writer.lock"
    writer = db._writer
    assert writer is not None
    with db.write() as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
        with writer:  # re-entered by the same thread, as a nested write would
            assert _state(lock) == "taken"
        assert _state(lock) == "taken"
    assert _state(lock) == "free"


def _insert(n: int) -> Callable[[Session], int]:
    def work(session: Session) -> int:
        session.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
        return n

    return work


def test_a_writer_that_will_not_wait_is_refused_while_another_process_writes(
    db: Database, tmp_path: Path
) -> None:
    holder = _hold(tmp_path / "w.db-writer.lock", 0.5)
    ran = []
    try:
        with pytest.raises(WouldBlock):
            db.transact(lambda session: ran.append(session), wait=False)
        assert ran == []  # refused before anything was done
    finally:
        holder.wait(10)
    assert db.transact(_insert(1), wait=False) == 1  # the file is free again
    assert _state(tmp_path / "w.db-writer.lock") == "free"  # and let go afterwards


def test_a_writer_that_will_not_wait_is_refused_while_another_thread_writes(
    db: Database, tmp_path: Path
) -> None:
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with db.write() as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert inside.wait(10)
        with pytest.raises(WouldBlock):
            db.transact(_insert(2), wait=False)
    finally:
        leave.set()
        thread.join(10)
    assert db.transact(_insert(3), wait=False) == 3
    with db.read() as session:
        assert session.execute(text("SELECT n FROM t ORDER BY n")).scalars().all() == [1, 3]
    assert _state(tmp_path / "w.db-writer.lock") == "free"


def test_a_writer_that_will_not_wait_rolls_back_its_own_failure(db: Database) -> None:
    def fails(session: Session) -> None:
        session.execute(text("INSERT INTO t VALUES (5)"))
        raise ValueError("no")

    with pytest.raises(ValueError):
        db.transact(fails, wait=False)
    assert db.transact(_insert(6)) == 6  # the lock was let go: a waiting writer gets in
    with db.read() as session:
        assert session.execute(text("SELECT n FROM t")).scalars().all() == [6]


def test_a_payment_waits_for_another_process_and_the_loop_stays_free(
    tmp_path: Path,
) -> None:
    """cryptopay on SQLite pays on the event loop; while another process writes it
    waits for it without holding the loop, which answers other requests meanwhile."""
    database = tmp_path / "g.db"
    (tmp_path / "gw").mkdir()
    with start_gateway(tmp_path / "gw", f"sqlite:///{database}") as gw, gw.client() as client:
        assert pay(gw, client).json()["status"] == "AUTH"  # on the loop
        invoice = new_invoice()
        access = token(client, invoice=invoice)["access_token"]
        body = payment_body(gw, invoice)
        holder = _hold(Path(f"{database}-writer.lock"), 1.0)
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool, gw.client() as other:
            paying = pool.submit(cryptopay, other, access, body)
            time.sleep(0.2)
            asked = time.monotonic()
            assert client.get("/public.rsa").status_code == 200
            answered_in = time.monotonic() - asked
            response = paying.result(30)
        waited = time.monotonic() - started
        holder.wait(10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "AUTH" and response.json()["invoiceID"] == invoice
    assert waited > 0.6  # it waited for the other process's write
    assert answered_in < 0.5  # while the event loop went on answering


def test_a_payment_on_the_loop_gives_up_like_sqlite_after_the_busy_timeout(
    tmp_path: Path,
) -> None:
    from tests.test_atomic_payment import CARD, _context, _order
    from tolem.config import Settings
    from tolem.db.migrate import prepare_database
    from tolem.payments import service
    from tolem.runtime import Runtime

    rt = Runtime.start(Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'p.db'}"))
    try:
        prepare_database(rt.db, sandbox=True)
        assert rt.db._writer is not None
        rt.db._writer.timeout = 0.5
        invoice = new_invoice()
        holder = _hold(tmp_path / "p.db-writer.lock", 3)
        try:
            started = time.monotonic()
            with pytest.raises(OperationalError, match="database is locked"):
                asyncio.run(
                    service.pay_on_the_loop(
                        rt, _context(rt, invoice), _order(invoice), CARD, SANDBOX_TERMINAL_ID
                    )
                )
            assert 0.4 < time.monotonic() - started < 2.5
        finally:
            holder.kill()
            holder.wait(10)
        tx, _ = asyncio.run(
            service.pay_on_the_loop(
                rt, _context(rt, invoice), _order(invoice), CARD, SANDBOX_TERMINAL_ID
            )
        )
        assert tx.status == "AUTH"  # nothing of the first attempt was kept: its invoice is free
    finally:
        rt.close()
