"""SQLite writers of several processes queue on a lock file beside the database."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tolem.db.engine import Database

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
