"""Group commit: the event loop's SQLite writes gathered into one transaction a turn.

A payment on SQLite runs on the event loop (a thread costs more than its own database
work). Committed one by one, each payment paid for a session, ``BEGIN IMMEDIATE``, the
writer slot and a ``COMMIT`` that appends its pages to the WAL: a quarter of its CPU
time. Under load, requests arrive together: every request that reaches its write in
one turn of the loop joins the same batch, and the batch runs at the start of the next
turn in one write transaction, each write in a savepoint of its own, with one commit
for all of them (what PostgreSQL calls group commit).

What a caller sees does not change:

- its ``await`` returns once its write is committed, with what its work returned;
- a write that raises is undone alone (its savepoint is rolled back) and its caller gets
  the exception; the others go on. A batch of one runs without a savepoint;
- if the commit itself fails, nothing of the batch is kept and every caller gets the
  error; nobody was answered before it;
- while another writer (a thread, another worker, the CLI) holds the database, the batch
  waits without a thread, trying again after 0.2 ms, then up to every 2 ms, and writes
  arriving meanwhile join it; a write still waiting after the busy timeout fails as a
  locked database does;
- a caller cancelled before its batch runs is left out of it (nothing of it is written).

The work runs on the loop: it must not wait for anything but the local database (a
connector's network call raises :class:`~tolem.db.engine.WouldBlock` and is done in a
thread by its caller, see tolem.payments.service).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy.orm import Session

from tolem.db.engine import WriterBusy, database_locked

if TYPE_CHECKING:
    from tolem.db.engine import Database

_T = TypeVar("_T")

#: The first and the longest pause before trying a busy writer slot again (seconds).
FIRST_PAUSE = 0.0002
LONGEST_PAUSE = 0.002
#: Writes of one transaction at most: a backlog (after a long wait for the writer) is
#: written over several turns, the loop answering requests between them.
LARGEST_BATCH = 64


@dataclass
class _Write:
    work: Callable[[Session], Any]
    future: asyncio.Future[Any]
    deadline: float
    outcome: tuple[bool, Any] = field(default=(False, None))


class GroupCommit:
    """The writes of one event loop to one database (see the module's text).

    Made by :meth:`tolem.db.engine.Database.grouped`, one per loop.
    """

    def __init__(self, db: Database, loop: asyncio.AbstractEventLoop) -> None:
        self.db = db
        self.loop = loop
        self.batches = 0  # how many transactions ran (for tests and the curious)
        self._waiting: list[_Write] = []
        self._turn: asyncio.Handle | None = None
        self._pause = FIRST_PAUSE

    async def transact(self, work: Callable[[Session], _T]) -> _T:
        """``work(session)`` in a write transaction, committed before this returns."""
        write = _Write(work, self.loop.create_future(), time.monotonic() + self.db.busy_timeout)
        self._waiting.append(write)
        if self._turn is None:
            self._turn = self.loop.call_soon(self._run)
        try:
            return cast(_T, await write.future)
        except asyncio.CancelledError:
            future = write.future
            if not future.done() or future.cancelled():
                raise  # left out of its batch: nothing of it was written
            # Cancelled after its write committed: what was written is answered (an
            # Idempotency-Key's replay depends on it), the cancellation is dropped.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return cast(_T, future.result())

    def _run(self) -> None:
        self._turn = None
        waiting = [write for write in self._waiting if not write.future.done()]
        batch, self._waiting = waiting[:LARGEST_BATCH], waiting[LARGEST_BATCH:]
        if self._waiting:
            self._turn = self.loop.call_soon(self._run)
        if not batch:
            return
        try:
            self._write(batch)
        except WriterBusy:  # nothing was done
            self._again(batch)
            return
        except BaseException as exc:  # the commit failed (or a write raised a
            # BaseException): nothing of the batch was kept
            for write in batch:
                _settle(write.future, False, exc)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: go on
                raise
            return
        self._pause = FIRST_PAUSE
        self.batches += 1
        for write in batch:
            _settle(write.future, *write.outcome)

    def _write(self, batch: list[_Write]) -> None:
        if len(batch) == 1:  # alone: its failure undoes the whole transaction
            write = batch[0]
            try:
                write.outcome = (True, self.db.transact(write.work, wait=False))
            except WriterBusy:
                raise
            except Exception as exc:
                write.outcome = (False, exc)
            return
        # The writer slot is held across both tries: between them a waiting thread
        # would take it, and the batch, spoilt again, would be tried again and again.
        with self.db.writer_held(wait=False):
            try:
                with self.db.write(wait=False) as session:
                    self._each_in_a_savepoint(session, batch)
            except _Spoilt:  # rolled back: again, each write in the ORM's own savepoint
                with self.db.write(wait=False) as session:
                    for write in batch:
                        try:
                            with session.begin_nested():
                                write.outcome = (True, write.work(session))
                        except Exception as exc:
                            write.outcome = (False, exc)

    @staticmethod
    def _each_in_a_savepoint(session: Session, batch: list[_Write]) -> None:
        """Each write in a savepoint made on the driver's cursor: the ORM's own
        (``Session.begin_nested``) compiles and runs its statements through the whole
        engine, and cost as much CPU as the commits the batch saves."""
        driver = session.connection().connection.driver_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            for write in batch:
                cursor.execute("SAVEPOINT tolem_write")
                try:
                    write.outcome = (True, write.work(session))
                    session.flush()  # what the ORM holds goes in before the release
                except Exception as exc:
                    if not session.is_active:  # a failed flush rolled back all of it
                        raise _Spoilt from exc
                    write.outcome = (False, exc)
                    cursor.execute("ROLLBACK TO tolem_write")
                    # What the session keeps of the undone write must not be flushed with
                    # the next one; the writes before it are flushed already.
                    session.expunge_all()
                cursor.execute("RELEASE tolem_write")
        finally:
            cursor.close()

    def _again(self, batch: list[_Write]) -> None:
        """Try the batch again shortly; writes past their deadline fail."""
        now = time.monotonic()
        kept = []
        for write in batch:
            if write.deadline <= now:
                _settle(write.future, False, database_locked())
            else:
                kept.append(write)
        self._waiting[:0] = kept
        if self._waiting:
            if self._turn is not None:  # the rest of a backlog was due now: not before
                self._turn.cancel()
            self._turn = self.loop.call_later(self._pause, self._run)
            self._pause = min(self._pause * 2, LONGEST_PAUSE)


class _Spoilt(Exception):
    """A write failed in a way that rolled back the whole transaction (a failed flush
    does): the batch is done again, more slowly."""


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if ok:
        future.set_result(value)
    elif isinstance(value, StopIteration):  # a future refuses it (TypeError)
        future.set_exception(RuntimeError(f"the write raised {value!r}"))
    else:
        future.set_exception(value)
