"""Engines and transactions for SQLite and PostgreSQL.

SQLite runs in WAL mode. Write transactions begin with ``BEGIN IMMEDIATE`` so that two
writers queue on the busy timeout instead of failing when a read lock cannot be upgraded;
read-only transactions stay deferred and never block writers.

SQLite has one writer at a time, and its busy handler makes a waiting writer sleep in
growing steps (up to 100 ms) and retry, so under load a writer can lose the race again and
again: that was a tail of seconds for payments. Within one process, write transactions
therefore queue on a lock of their own, taken before ``BEGIN IMMEDIATE`` and released
after ``COMMIT`` or ``ROLLBACK``; a thread waiting on it wakes as soon as the writer
before it is done. Writers in other processes (more workers, the CLI) still meet on the
busy timeout. Nothing holds a write transaction across a network call, so the lock is
held only for local database work.

Writers in other processes (more workers, the CLI) queue on a second lock: an advisory
``flock`` on ``<database file>-writer.lock``, taken by the thread that holds the
process's lock. Waiting on it polls every 0.2 to 2 ms, where SQLite's busy handler
sleeps up to 100 ms between tries; the kernel lets go of it when a process dies.

The event loop writes without a thread (:meth:`Database.transact_on_the_loop`): on SQLite
through the loop's group commit (tolem.db.group), on PostgreSQL through psycopg's
asynchronous connection, the same synchronous work run by SQLAlchemy's asyncio bridge
(``AsyncSession.run_sync``: its statements wait on the loop, not in a thread).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

try:
    import fcntl
except ImportError:  # not on Windows: writers in other processes meet on the busy timeout
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from tolem.db.group import GroupCommit

log = logging.getLogger("tolem.db")

_T = TypeVar("_T")
_WRITE = "tolem_write"
#: Seconds a writer waits for the database (SQLite's busy timeout, and the process's
#: writer lock before it).
BUSY_TIMEOUT = 30

#: PostgreSQL connections a process keeps for its threads and for its event loop (at
#: most twice as many at once: the overflow is closed when it comes back).
THREAD_POOL = 20
LOOP_POOL = 20


def make_engine(
    url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    pool_size: int = THREAD_POOL,
    sqlite_autocheckpoint: bool = True,
) -> Engine:
    """``sqlite_autocheckpoint=False``: this engine's connections never checkpoint the
    WAL themselves (a :class:`Checkpointer` does it in the background)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT},
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            # The connection used last, again: its page cache is valid only until another
            # connection writes, so taking them in turn (the pool's default) read the
            # index pages afresh for nearly every payment (BENCHMARKS.md, "Fifth round").
            pool_use_lifo=True,
            hide_parameters=True,  # a failed statement's values stay out of the logs
        )
        _configure_sqlite(engine, sqlite_synchronous, autocheckpoint=sqlite_autocheckpoint)
        return engine
    return create_engine(url, **_postgresql_pool(pool_size))


async def _to_its_end(task: asyncio.Future[_T]) -> _T:
    """``task``'s outcome, waiting for its end even if the caller is cancelled meanwhile:
    a result is then returned all the same (the caller's cancellations dropped); a
    failure is raised as the cancellation."""
    cancelled = 0
    while not task.done():
        try:
            await asyncio.wait((task,))  # cancelling the wait leaves the task running
        except asyncio.CancelledError:
            cancelled += 1
    if cancelled and (task.cancelled() or task.exception() is not None):
        raise asyncio.CancelledError
    result = task.result()  # the task's own error, if any
    current = asyncio.current_task()
    for _ in range(cancelled):
        if current is not None:
            current.uncancel()
    return result


def _need_greenlet() -> None:
    """PostgreSQL's payments run through SQLAlchemy's asyncio bridge, which needs
    greenlet: say so at start-up, not at the first payment."""
    if importlib.util.find_spec("greenlet") is None:
        raise RuntimeError("PostgreSQL needs the greenlet package: pip install 'tolem[postgres]'")


def _postgresql_pool(pool_size: int = THREAD_POOL) -> dict[str, Any]:
    return {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_pre_ping": True,
        "hide_parameters": True,  # a failed statement's values stay out of the logs
    }


def _configure_sqlite(engine: Engine, synchronous: str, *, autocheckpoint: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is turned off; the "begin" hook
        # below issues BEGIN itself, so SAVEPOINT and IMMEDIATE work as documented.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000}")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_WRITE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class Directory:
    """Rows that tokens and payments read on every request (merchants, terminals), kept
    a second per process and per database (:attr:`Database.directory`).

    Every token and payment read its merchant or terminal from the database: a query,
    and for a token the only reason to leave the event loop. Entries are kept for
    ``ttl`` seconds, absent ones too (so a known client id answers no faster than an
    unknown one), at most ``size`` of them. What is kept is detached from any session
    and only read. A change made in this process (tolem.merchants.service's
    ``update_terminal``, ``rotate_secret``) empties the directory; other processes see
    it within ``ttl``.
    """

    def __init__(self, *, ttl: float = 1.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[tuple[str, ...], tuple[float, object]] = {}

    def get(self, key: tuple[str, ...]) -> tuple[bool, object]:
        """(True, value) when ``key`` is kept and fresh, else (False, None)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def load(self, key: tuple[str, ...], session: Session, load: Callable[[], _T]) -> _T:
        """The value kept under ``key``, else ``load()``'s, detached and kept."""
        found, value = self.get(key)
        if found:
            return value  # type: ignore[return-value]
        fresh = load()
        if self.ttl <= 0:  # keeps nothing: the objects stay with their session
            return fresh
        for item in fresh if isinstance(fresh, tuple) else (fresh,):
            if item is not None:
                session.expunge(item)  # read only, by any thread: no session owns it
        if len(self._entries) >= self.size:
            self._entries.clear()  # a flood of client ids costs queries, not memory
        self._entries[key] = (time.monotonic() + self.ttl, fresh)
        return fresh

    def forget(self) -> None:
        self._entries.clear()


class Database:
    """The engine plus the two kinds of unit of work the services use."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "NORMAL",
        background_checkpoints: bool = False,
    ) -> None:
        """``background_checkpoints``: on a SQLite file, a :class:`Checkpointer` thread
        checkpoints the WAL instead of the writers (for a serving process)."""
        self.url = url
        if not url.startswith("sqlite"):
            _need_greenlet()
        path = _database_file(url)  # None: PostgreSQL, or SQLite in memory
        background = background_checkpoints and path is not None
        self.engine = make_engine(
            url, sqlite_synchronous=sqlite_synchronous, sqlite_autocheckpoint=not background
        )
        #: Merchants and terminals as tokens and payments read them (see Directory).
        self.directory = Directory()
        self._sessions = sessionmaker(
            self.engine, expire_on_commit=False, info={"directory": self.directory}
        )
        # Re-entrant: a write opened inside another in the same thread behaves as it
        # did without the lock (it waits on SQLite's busy timeout, then fails).
        # The lock file: where the processes sharing the SQLite file queue their writers
        # (none for a database in memory: no other process can open it).
        lock_file = f"{path}-writer.lock" if path is not None else None
        self._writer = _WriterLock(lock_file) if self.is_sqlite else None
        self._checkpointer: Checkpointer | None = None
        self._group: GroupCommit | None = None
        # PostgreSQL on the event loop: an engine per loop (a pool's waiters belong to
        # the loop that made them), made at its first use.
        self._on_loops: dict[
            asyncio.AbstractEventLoop, tuple[AsyncEngine, async_sessionmaker[AsyncSession]]
        ] = {}
        if background and path is not None and self._writer is not None:
            self._checkpointer = Checkpointer(path, self._writer, synchronous=sqlite_synchronous)

    @property
    def busy_timeout(self) -> float:
        """Seconds a writer waits for another before it fails (SQLite)."""
        return self._writer.timeout if self._writer is not None else BUSY_TIMEOUT

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def write(self, *, wait: bool = True) -> Iterator[Session]:
        """A transaction that will write: commits on success, rolls back on error.

        ``wait=False``: raise :class:`WriterBusy` at once if another writer holds the
        SQLite database, instead of waiting for it (see :meth:`transact`).
        """
        with (
            self._writer.held(wait) if self._writer else nullcontext(),
            self._sessions() as session,
        ):
            session.connection(execution_options={_WRITE: True})
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def writer_held(self, *, wait: bool = True) -> Iterator[None]:
        """The SQLite writer slot held across several write transactions of this thread
        (re-entrant: their own :meth:`write` takes it again at once). Nothing to hold on
        PostgreSQL."""
        with self._writer.held(wait) if self._writer else nullcontext():
            yield

    def transact(self, work: Callable[[Session], _T], *, wait: bool = True) -> _T:
        """``work(session)`` in a write transaction, committed before this returns.

        ``wait=False`` is for the event loop: on SQLite, if another writer holds the
        database (a thread of this process, or another process), raise
        :class:`WriterBusy` at once, before anything is done, instead of waiting.
        """
        with self.write(wait=wait) as session:
            return work(session)

    async def transact_on_the_loop(self, work: Callable[[Session], _T]) -> _T:
        """``work(session)`` in a write transaction, committed before this returns,
        without a thread: on SQLite it joins the loop's group commit (tolem.db.group), on
        PostgreSQL its statements wait on the loop (psycopg's asynchronous connection).

        A thread's statements wait for the interpreter lock behind a busy loop, up to
        5 ms each (the switch interval); this costs none of that (BENCHMARKS.md, "Sixth
        round"). ``work`` must not wait for anything but the database.

        A caller cancelled meanwhile: on SQLite, left out if its batch has not run; on
        PostgreSQL the transaction runs to its end all the same (a COMMIT already sent
        cannot be taken back). Either way a write that committed is answered, the
        cancellation dropped (an Idempotency-Key's replay depends on it)."""
        if self.is_sqlite:
            return await self.grouped().transact(work)
        sessions = self._loop_sessions()

        async def transaction() -> _T:
            async with sessions() as session, session.begin():
                return await session.run_sync(work)

        return await _to_its_end(asyncio.ensure_future(transaction()))

    async def read_on_the_loop(self, work: Callable[[Session], _T]) -> _T:
        """``work(session)`` in a read-only transaction, without a thread (on SQLite a
        WAL reader never waits: the work runs at once)."""
        if self.is_sqlite:
            with self.read() as session:
                return work(session)
        async with self._loop_sessions()() as session:
            return await session.run_sync(work)

    def _loop_sessions(self) -> async_sessionmaker[AsyncSession]:
        loop = asyncio.get_running_loop()
        made = self._on_loops.get(loop)
        if made is None:
            # As large as the threads' pool: with 10, payments and postLinks waited for
            # connections (BENCHMARKS.md, "Sixth round"; docs/operations.md).
            engine = create_async_engine(self.url, **_postgresql_pool(LOOP_POOL))
            sessions = async_sessionmaker(
                engine, expire_on_commit=False, info={"directory": self.directory}
            )
            made = self._on_loops[loop] = (engine, sessions)
        return made[1]

    async def dispose_on_the_loop(self) -> None:
        """Close the running loop's PostgreSQL connections (before the loop ends)."""
        made = self._on_loops.pop(asyncio.get_running_loop(), None)
        if made is not None:
            await made[0].dispose()

    def grouped(self) -> GroupCommit:
        """The running event loop's :class:`~tolem.db.group.GroupCommit` (SQLite): its
        ``await transact(work)`` gathers the writes of one turn into one commit."""
        from tolem.db.group import GroupCommit

        loop = asyncio.get_running_loop()
        group = self._group
        if group is None or group.loop is not loop:
            group = self._group = GroupCommit(self, loop)
        return group

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction, ended without commit.

        Closing (not rolling back) the session ends the transaction and detaches what
        was loaded without expiring it, so the objects stay readable afterwards.
        """
        with self._sessions() as session:
            yield session

    def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        # Connections of loops that ended without dispose_on_the_loop: psycopg closes
        # an asynchronous connection on any loop, so a loop of its own does it, in a
        # thread of its own (this one may be running a loop).
        while self._on_loops:
            _loop, (engine, _sessions) = self._on_loops.popitem()
            with ThreadPoolExecutor(1) as closer:
                closer.submit(asyncio.run, engine.dispose()).result()
        self.engine.dispose()
        if self._writer is not None:
            self._writer.close()


def _database_file(url: str) -> str | None:
    """The file of a SQLite URL; None for another database or one in memory."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database:
        return None
    if database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


class Checkpointer:
    """SQLite's WAL checkpoints in a thread of their own, off the writers' path.

    By default the writer whose commit takes the WAL past 1,000 pages copies them into
    the database file and syncs it, inside its COMMIT: on the event loop that stopped
    every request for several milliseconds every few dozen payments (BENCHMARKS.md,
    "Fourth round"). Here the serving process's connections never checkpoint
    (``wal_autocheckpoint=0``); this thread does, every ``interval`` seconds, with a
    connection of its own. The sqlite3 module lets go of the GIL while SQLite works, so
    the copy and the sync run beside the event loop.

    A PASSIVE checkpoint does not stop writers; but while writers keep appending, the
    WAL cannot start again from its beginning and its file grows. When the WAL holds
    more than ``restart_pages`` pages, a second checkpoint follows the first at once
    with the writer slot held: it copies only what was written during the first (a few
    pages; writers wait about as long as for one payment), and the next writer starts
    the WAL over (measured: 1-3 ms held). Holding the slot for the whole checkpoint
    instead (thousands of pages, 8-10 ms) showed in cryptopay's p95 at 1 worker: 31-36
    ms instead of 26-27.

    Nothing about durability changes: a checkpoint moves committed pages from the WAL
    into the database file. If this process dies, the next connection to open the
    database (or another process's checkpointer) carries on from the WAL.
    """

    def __init__(
        self,
        path: str,
        writer: _WriterLock,
        *,
        synchronous: str = "NORMAL",
        interval: float = 0.1,
        restart_pages: int = 10_000,
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_pages = restart_pages
        self.checkpoints = 0  # how many ran (for tests and the curious)
        self._writer = writer
        self._synchronous = synchronous
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="tolem-sqlite-checkpointer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        held_at = -1  # the WAL's size after the last checkpoint with the slot held
        pause = self.interval
        while not self._stop.wait(pause):
            pause = self.interval
            try:
                if connection is None:
                    connection = sqlite3.connect(
                        self.path, isolation_level=None, check_same_thread=False
                    )
                    connection.execute(f"PRAGMA synchronous={self._synchronous}")
                    connection.execute("PRAGMA busy_timeout=0")
                _busy, pages, _done = self.checkpoint(connection)  # the bulk, writers on
                if pages < 0:
                    # Not a WAL database to this connection: it was opened before the
                    # database was (a fresh data dir). A new one will see the WAL.
                    connection.close()
                    connection = None
                elif pages > self.restart_pages and pages != held_at:
                    # What the writers added meanwhile (a few pages, not the bulk), with
                    # the writer slot held: then every page is in the database file and
                    # the next writer starts the WAL over. (Unchanged since the last
                    # time: nobody wrote, nothing to do.)
                    with self._writer.held(wait=True):
                        _busy, held_at, _done = self.checkpoint(connection)
            except Exception:  # a bad moment (the file locked, moved): try again later
                log.warning("WAL checkpoint of %s failed", self.path, exc_info=True)
                pause = max(self.interval, 5.0)  # not a traceback ten times a second
        if connection is not None:
            connection.close()

    def checkpoint(self, connection: sqlite3.Connection) -> tuple[int, int, int]:
        """(busy, pages in the WAL, pages checkpointed), as SQLite's pragma answers."""
        row = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        return int(row[0]), int(row[1]), int(row[2])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


def database_locked() -> OperationalError:
    return OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))


class WouldBlock(Exception):
    """The work would wait (for another writer of the SQLite database, or for a network
    call) and its caller, the event loop, asked not to: nothing was done, do it in a
    thread."""


class WriterBusy(WouldBlock):
    """Another writer holds the SQLite database: nothing was done; try again shortly."""


class _WriterLock:
    """The SQLite writer slot: one write transaction at a time in the process (a thread
    lock), and across processes (an advisory lock on ``path``), failing like SQLite
    after ``timeout`` seconds."""

    def __init__(self, path: str | None, timeout: float = BUSY_TIMEOUT) -> None:
        self._lock = threading.RLock()
        self._path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._depth = 0  # writes open in the thread that holds the lock

    def __enter__(self) -> None:
        if not self._take(self.timeout):
            raise database_locked()

    @contextmanager
    def held(self, wait: bool) -> Iterator[None]:
        """The lock for one write; ``wait=False``: :class:`WriterBusy` at once if another
        writer holds it, in this process or another."""
        if not self._take(self.timeout if wait else 0.0):
            raise database_locked() if wait else WriterBusy
        try:
            yield
        finally:
            self.__exit__()

    def _take(self, timeout: float) -> bool:
        """Take both locks within ``timeout`` seconds (0: only if both are free now)."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            return False
        self._depth += 1
        if self._depth > 1 or self._path is None or fcntl is None:
            return True  # re-entered, or no other process can write
        taken = False
        try:
            taken = self._take_file(deadline)
        finally:
            if not taken:  # another process kept the file (or waiting failed)
                self._depth -= 1
                self._lock.release()
        return taken

    def _take_file(self, deadline: float) -> bool:
        """The lock file, polled until ``deadline``; False if another process kept it."""
        assert fcntl is not None and self._path is not None
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        pause = 0.0002
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

    def close(self) -> None:
        """Close the lock file (a write still open keeps it until it ends)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._lock.release()
