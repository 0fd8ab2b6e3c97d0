"""Database.transact_on_the_loop / read_on_the_loop: writes and reads without a thread.

On SQLite the write joins the loop's group commit (tests/test_group_commit.py has the
rest); on PostgreSQL the same synchronous work runs through SQLAlchemy's asyncio bridge,
its statements waiting on the loop. Both databases: the work runs on the loop's own
thread, commits before the await returns, rolls back alone when it raises, and Direct's
statements (the payment path's) run in it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tests.conftest import fresh_postgres
from tests.test_direct import INSERT, _row, _stored, database_with_rows
from tolem.db.direct import Direct
from tolem.db.engine import Database


@pytest.fixture
def db(postgres_or_sqlite_empty_url: str) -> Iterator[Database]:
    with database_with_rows(postgres_or_sqlite_empty_url) as database:
        yield database


def _count(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM direct_rows")).scalar_one())


def test_a_write_commits_on_the_loops_thread(db: Database) -> None:
    threads: list[threading.Thread] = []

    def work(session: Session) -> str:
        threads.append(threading.current_thread())
        Direct(INSERT).execute(session, _row("on-the-loop"))
        return "done"

    async def main() -> tuple[str, int]:
        answer = await db.transact_on_the_loop(work)
        # Committed: another connection (a thread's, as the rest of tolem reads) sees it.
        seen = await asyncio.to_thread(lambda: _count_fresh(db))
        await db.dispose_on_the_loop()
        return answer, seen

    assert asyncio.run(main()) == ("done", 1)
    assert threads == [threading.main_thread()]
    assert _stored(db, "on-the-loop")[1] in (Decimal("1234.50"), 123450)


def _count_fresh(db: Database) -> int:
    with db.read() as session:
        return _count(session)


def test_a_write_that_raises_leaves_nothing(db: Database) -> None:
    def work(session: Session) -> None:
        Direct(INSERT).execute(session, _row("undone"))
        raise RuntimeError("after the insert")

    def duplicate(session: Session) -> None:
        Direct(INSERT).execute(session, _row("twice"))
        Direct(INSERT).execute(session, _row("twice"))

    async def main() -> None:
        with pytest.raises(RuntimeError, match="after the insert"):
            await db.transact_on_the_loop(work)
        with pytest.raises(IntegrityError):
            await db.transact_on_the_loop(duplicate)
        assert await db.read_on_the_loop(_count) == 0
        await db.dispose_on_the_loop()

    asyncio.run(main())


@pytest.fixture
def postgresql() -> Iterator[Database]:
    with fresh_postgres("tolem_loop") as url, database_with_rows(url) as database:
        yield database


def test_postgresql_statements_wait_on_the_loop_not_in_turn(postgresql: Database) -> None:
    """Two writes that each wait 0.4 s in the database overlap: neither holds the loop
    (nor a thread) while it waits. (SQLite has one writer: its writes share a commit.)"""
    db = postgresql

    def slow(code: str) -> object:
        def work(session: Session) -> None:
            session.execute(text("SELECT pg_sleep(0.4)"))
            Direct(INSERT).execute(session, _row(code))

        return work

    async def main() -> float:
        started = time.monotonic()
        await asyncio.gather(
            db.transact_on_the_loop(slow("a")),  # type: ignore[arg-type]
            db.transact_on_the_loop(slow("b")),  # type: ignore[arg-type]
            asyncio.sleep(0.1),  # the loop answers meanwhile
        )
        elapsed = time.monotonic() - started
        assert await db.read_on_the_loop(_count) == 2
        await db.dispose_on_the_loop()
        return elapsed

    assert asyncio.run(main()) < 0.75


def test_each_loop_has_its_connections_and_dispose_closes_them(db: Database) -> None:
    """A second loop (another asyncio.run) gets connections of its own; connections left
    by a loop that ended are closed by dispose()."""

    async def one(code: str) -> None:
        await db.transact_on_the_loop(lambda session: Direct(INSERT).execute(session, _row(code)))

    asyncio.run(one("first"))
    asyncio.run(one("second"))  # the first loop is closed: its connections are not used
    assert _count_fresh(db) == 2
    db.dispose()  # without dispose_on_the_loop: closed here (a warning would fail this)
    if not db.is_sqlite:
        watcher = Database(db.url)
        try:
            with watcher.engine.connect() as connection:
                left = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
        finally:
            watcher.dispose()
        assert left == 0


def test_postgresql_without_greenlet_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "greenlet", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match=r"pip install 'tolem\[postgres\]'"):
        Database("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_a_postgresql_write_runs_to_its_end_when_its_caller_is_cancelled(
    postgresql: Database,
) -> None:
    """A COMMIT already sent cannot be taken back: the write ends all the same, and its
    caller gets the answer (as group commit answers a write committed before the
    cancellation); a write that fails meanwhile gives the caller its cancellation."""
    db = postgresql

    def slow(code: str, fail: bool = False) -> object:
        def work(session: Session) -> str:
            session.execute(text("SELECT pg_sleep(0.3)"))
            Direct(INSERT).execute(session, _row(code))
            if fail:
                raise RuntimeError("after the insert")
            return code

        return work

    async def cancelled_meanwhile(work: object) -> object:
        task = asyncio.create_task(db.transact_on_the_loop(work))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    async def main() -> tuple[object, object, int]:
        kept = await cancelled_meanwhile(slow("kept"))
        failed = await cancelled_meanwhile(slow("failed", fail=True))
        count = await db.read_on_the_loop(_count)
        await db.dispose_on_the_loop()
        return kept, failed, count

    assert asyncio.run(main()) == ("kept", "cancelled", 1)
    assert _stored(db, "kept")[0] == "kept"
