"""SQLite's WAL checkpoints run in a thread of the serving process, not in its writers.

tolem.db.engine.Checkpointer: the serving process's connections never checkpoint
(``wal_autocheckpoint=0``); a thread does, and when writers never pause it takes the
writer slot so that the WAL starts over instead of growing without end.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from tolem.db.engine import Checkpointer, Database


def _database(path: Path, **options: bool) -> Database:
    db = Database(f"sqlite:///{path}", **options)
    with db.write() as session:
        session.execute(text("CREATE TABLE t (n INTEGER, payload BLOB)"))
    return db


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Database]:
    db = _database(tmp_path / "s.db", background_checkpoints=True)
    yield db
    db.dispose()


def _checkpointer(db: Database) -> Checkpointer:
    assert db._checkpointer is not None
    return db._checkpointer


def _autocheckpoint(db: Database) -> int:
    with db.engine.connect() as connection:
        return int(connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def _write(db: Database, rows: int, size: int = 3000) -> None:
    for n in range(rows):
        with db.write() as session:
            session.execute(text("INSERT INTO t VALUES (:n, :p)"), {"n": n, "p": b"x" * size})


def _wait_for_checkpoints(checkpointer: Checkpointer, count: int) -> None:
    target = checkpointer.checkpoints + count
    deadline = time.monotonic() + 10
    while checkpointer.checkpoints < target:
        assert time.monotonic() < deadline, "the checkpointer did not run"
        time.sleep(0.01)


def _rows_in_file(database: Path) -> int:
    """The rows of t in the database file alone: a copy of it, without its WAL."""
    copied = database.with_name("copy.db")
    shutil.copy(database, copied)
    copy = sqlite3.connect(copied)
    try:
        return int(copy.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        copy.close()


def test_a_serving_database_checkpoints_in_its_thread(serving: Database, tmp_path: Path) -> None:
    assert _autocheckpoint(serving) == 0  # the writers never do
    _write(serving, 600)  # far past SQLite's own 1,000-page threshold
    _wait_for_checkpoints(_checkpointer(serving), 2)
    # The database file alone, without its WAL, holds every committed row.
    assert _rows_in_file(tmp_path / "s.db") == 600


def test_a_checkpointer_that_opened_the_file_first_still_checkpoints(tmp_path: Path) -> None:
    """On a fresh data dir the thread may open the file before any connection has made
    it a WAL database; it must not stay stuck with that first connection."""
    db = Database(f"sqlite:///{tmp_path / 'fresh.db'}", background_checkpoints=True)
    try:
        checkpointer = _checkpointer(db)
        _wait_for_checkpoints(checkpointer, 2)  # it opened the file, not yet in WAL mode
        with db.write() as session:
            session.execute(text("CREATE TABLE t (n INTEGER, payload BLOB)"))
        _write(db, 300)
        _wait_for_checkpoints(checkpointer, 3)
        assert _rows_in_file(tmp_path / "fresh.db") == 300
    finally:
        db.dispose()


def test_an_idle_database_is_not_locked_for_nothing(serving: Database) -> None:
    """Past restart_pages the writer slot is held once for the WAL to start over, not at
    every tick while nobody writes."""
    checkpointer = _checkpointer(serving)
    checkpointer.interval = 0.02
    checkpointer.restart_pages = 100
    held = 0
    writer = serving._writer
    assert writer is not None
    take = writer.held

    @contextmanager
    def counted(wait: bool) -> Iterator[None]:
        nonlocal held
        held += 1
        with take(wait):
            yield

    writer.held = counted  # type: ignore[method-assign]
    _write(serving, 200)  # well past 100 pages; then nobody writes
    _wait_for_checkpoints(checkpointer, 3)
    before = held
    _wait_for_checkpoints(checkpointer, 20)
    assert held - before <= 1, (before, held)


def test_other_databases_keep_sqlites_own_checkpoints(tmp_path: Path) -> None:
    db = _database(tmp_path / "c.db")  # the CLI's, the tests'
    try:
        assert db._checkpointer is None
        assert _autocheckpoint(db) == 1000
    finally:
        db.dispose()


def test_the_wal_starts_over_while_writers_never_pause(serving: Database, tmp_path: Path) -> None:
    checkpointer = _checkpointer(serving)
    checkpointer.interval = 0.02
    checkpointer.restart_pages = 300
    wal = tmp_path / "s.db-wal"
    written = 0
    stop = threading.Event()

    def write() -> None:
        nonlocal written
        while not stop.is_set():
            _write(serving, 20)
            written += 20 * 3000

    writers = [threading.Thread(target=write) for _ in range(2)]
    for writer in writers:
        writer.start()
    time.sleep(2)
    stop.set()
    for writer in writers:
        writer.join()
    # The WAL file keeps its largest size. Never started over, it would hold every page
    # written, several times the payload (measured: 86 MB for 22 MB); started over, it
    # stays near restart_pages plus what arrives meanwhile (8.6 MB for 19 MB).
    assert written > 5_000_000, written
    assert wal.stat().st_size < written, (wal.stat().st_size, written)


def test_dispose_stops_the_thread(tmp_path: Path) -> None:
    db = _database(tmp_path / "d.db", background_checkpoints=True)
    thread = _checkpointer(db)._thread
    assert thread.is_alive()
    db.dispose()
    assert not thread.is_alive()


def test_no_checkpointer_without_a_file() -> None:
    from tolem.db.engine import _database_file

    assert _database_file("sqlite:///relative.db") is not None
    assert _database_file("sqlite://") is None
    assert _database_file("sqlite:///:memory:") is None
    assert _database_file("postgresql+psycopg://127.0.0.1/test") is None
