"""Group commit (tolem.db.group): the event loop's SQLite writes of one turn, one commit.

Each write's caller must see what it would see alone: its own result or its own error,
nothing of a failed write kept, nothing of a batch kept when its commit fails. SQLite
only: on PostgreSQL the payments run in threads (tolem.payments.endpoints).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests.test_atomic_payment import CARD, _context, _counts, _order
from tolem.config import Settings
from tolem.db.migrate import prepare_database
from tolem.errors import BadRequest
from tolem.merchants.service import SANDBOX_TERMINAL_ID
from tolem.payments import service
from tolem.runtime import Runtime


class _Scratch(DeclarativeBase):
    pass


class Row(_Scratch):
    __tablename__ = "scratch"
    n: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime.start(
        Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'g.db'}")
    )
    prepare_database(runtime.db, sandbox=True)
    with runtime.db.write() as session:
        session.execute(text("CREATE TABLE scratch (n INTEGER PRIMARY KEY)"))
        session.execute(text("CREATE TABLE scratch_child (n INTEGER REFERENCES scratch (n))"))
    yield runtime
    runtime.close()


def _insert(n: int) -> Callable[[Session], int]:
    def work(session: Session) -> int:
        session.execute(text("INSERT INTO scratch VALUES (:n)"), {"n": n})
        return n

    return work


def _rows(rt: Runtime) -> list[int]:
    with rt.db.read() as session:
        return list(session.scalars(text("SELECT n FROM scratch ORDER BY n")))


def _together(rt: Runtime, *works: Callable[[Session], Any]) -> tuple[list[Any], int]:
    """The works' outcomes (a result or an exception), started in one turn of a loop,
    and how many transactions the loop's group ran."""

    async def run() -> tuple[list[Any], int]:
        group = rt.db.grouped()
        outcomes = await asyncio.wait_for(  # a caller left waiting fails, not hangs
            asyncio.gather(*(group.transact(work) for work in works), return_exceptions=True),
            10,
        )
        return outcomes, group.batches

    return asyncio.run(run())


def test_payments_of_one_turn_share_one_commit(rt: Runtime) -> None:
    invoices = [f"{secrets.randbelow(10**9):09d}" for _ in range(12)]

    async def run() -> tuple[list[Any], int]:
        paid = await asyncio.gather(
            *(
                service.pay_on_the_loop(
                    rt, _context(rt, invoice), _order(invoice), CARD, SANDBOX_TERMINAL_ID
                )
                for invoice in invoices
            )
        )
        return paid, rt.db.grouped().batches

    paid, batches = asyncio.run(run())
    assert batches == 1
    assert [tx.invoice_id for tx, _ in paid] == invoices
    assert {tx.status for tx, _ in paid} == {"AUTH"}
    for invoice in invoices:  # each in full: claim, outcome, ledger, postLink
        assert _counts(rt, invoice) == (1, 2, 1, 1)


def test_a_refused_payment_in_a_batch_is_undone_alone(rt: Runtime) -> None:
    taken, other = (f"{secrets.randbelow(10**9):09d}" for _ in range(2))

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(
                service.pay_on_the_loop(
                    rt, _context(rt, invoice), _order(invoice), CARD, SANDBOX_TERMINAL_ID
                )
                for invoice in (taken, taken, other)
            ),
            return_exceptions=True,
        )

    first, second, third = asyncio.run(run())
    assert first[0].status == "AUTH" and third[0].status == "AUTH"
    assert isinstance(second, BadRequest) and "already used" in second.message
    assert _counts(rt, taken) == (1, 2, 1, 1) and _counts(rt, other) == (1, 2, 1, 1)


def test_a_write_that_fails_midway_is_undone_alone(rt: Runtime) -> None:
    def fails(session: Session) -> None:
        _insert(2)(session)
        raise RuntimeError("midway")

    outcomes, batches = _together(rt, _insert(1), fails, _insert(3))
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], RuntimeError)
    assert batches == 1 and _rows(rt) == [1, 3]


def test_a_write_alone_that_fails_leaves_nothing(rt: Runtime) -> None:
    def fails(session: Session) -> None:
        _insert(2)(session)
        raise RuntimeError("alone")

    outcomes, _ = _together(rt, fails)
    assert isinstance(outcomes[0], RuntimeError) and _rows(rt) == []


def test_a_failed_flush_has_the_batch_done_again_in_the_orms_savepoints(rt: Runtime) -> None:
    """A failed flush rolls back the whole transaction: the batch is done once more,
    each write in the ORM's savepoint; only the failed write is missing."""
    calls: list[str] = []

    def counted(name: str, work: Callable[[Session], Any]) -> Callable[[Session], Any]:
        def run(session: Session) -> Any:
            calls.append(name)
            return work(session)

        return run

    def duplicate(session: Session) -> None:
        session.add(Row(n=1))  # the first write's row: the flush fails
        session.flush()

    outcomes, batches = _together(
        rt, counted("one", _insert(1)), counted("dup", duplicate), counted("three", _insert(3))
    )
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], IntegrityError)
    assert _rows(rt) == [1, 3] and batches == 1
    assert calls == ["one", "dup", "one", "dup", "three"]


def test_an_object_left_by_a_failed_write_is_not_flushed_with_the_next(rt: Runtime) -> None:
    def fails(session: Session) -> None:
        session.add(Row(n=5))  # pending, never flushed by this write
        raise RuntimeError("left behind")

    outcomes, _ = _together(rt, _insert(1), fails, _insert(3))
    assert isinstance(outcomes[1], RuntimeError)
    assert _rows(rt) == [1, 3]


def test_a_failed_commit_fails_every_write_of_the_batch(rt: Runtime) -> None:
    def breaks_the_commit(session: Session) -> None:
        # A deferred foreign key: the statement passes, the COMMIT fails.
        session.execute(text("PRAGMA defer_foreign_keys=ON"))
        session.execute(text("INSERT INTO scratch_child VALUES (99)"))

    outcomes, batches = _together(rt, _insert(1), breaks_the_commit, _insert(3))
    assert all(isinstance(outcome, IntegrityError) for outcome in outcomes), outcomes
    assert batches == 0 and _rows(rt) == []
    outcomes, _ = _together(rt, _insert(1))  # the next batch is unaffected
    assert outcomes == [1] and _rows(rt) == [1]


def test_a_write_cancelled_before_its_turn_is_left_out(rt: Runtime) -> None:
    async def run() -> tuple[Any, Any]:
        group = rt.db.grouped()
        cancelled = asyncio.ensure_future(group.transact(_insert(1)))
        kept = asyncio.ensure_future(group.transact(_insert(2)))
        await asyncio.sleep(0)  # both wait for the turn
        cancelled.cancel()
        return await asyncio.gather(cancelled, kept, return_exceptions=True)

    first, second = asyncio.run(run())
    assert isinstance(first, asyncio.CancelledError) and second == 2
    assert _rows(rt) == [2]


def test_writes_wait_for_a_busy_writer_together_without_a_thread(rt: Runtime) -> None:
    """While a thread holds the writer, the loop's writes wait in one batch (the loop
    stays free), then commit together once it lets go."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with rt.db.write() as session:
            session.execute(text("INSERT INTO scratch VALUES (100)"))
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)

    async def run() -> tuple[list[Any], int, float]:
        group = rt.db.grouped()
        writes = []
        for n in range(5):  # arriving one after another while the writer is busy
            writes.append(asyncio.ensure_future(group.transact(_insert(n))))
            await asyncio.sleep(0.02)
        ticked = time.monotonic()
        await asyncio.sleep(0.01)  # the loop is not blocked meanwhile
        lag = time.monotonic() - ticked
        release.set()
        return await asyncio.gather(*writes), group.batches, lag

    outcomes, batches, lag = asyncio.run(run())
    thread.join(10)
    assert outcomes == [0, 1, 2, 3, 4] and batches == 1 and lag < 0.1
    assert _rows(rt) == [0, 1, 2, 3, 4, 100]


def test_the_delivery_worker_writes_on_the_loop_beside_the_payments(rt: Runtime) -> None:
    """On SQLite the delivery worker claims and records through the group commit: no
    thread of its own competes with the loop for the writer (each of its statements
    waited for the GIL while it held the writer, and the postLink lag grew to seconds)."""
    from tolem.notifications.delivery import DeliveryWorker

    writers: list[threading.Thread] = []
    real_write = rt.db.write

    def write(*args: Any, **kwargs: Any) -> Any:
        writers.append(threading.current_thread())
        return real_write(*args, **kwargs)

    rt.db.write = write  # type: ignore[method-assign]
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        received.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def run() -> None:
        receiver = await asyncio.start_server(answer, "127.0.0.1", 0)
        try:
            await deliver(receiver)
        finally:
            receiver.close()
            await receiver.wait_closed()

    async def deliver(receiver: asyncio.Server) -> None:
        port = receiver.sockets[0].getsockname()[1]
        invoices = [f"{secrets.randbelow(10**9):09d}" for _ in range(5)]
        for invoice in invoices:
            ctx = _context(rt, invoice)
            link = f"http://127.0.0.1:{port}/post"
            token = dataclasses.replace(ctx.token, post_link=link)
            order = dataclasses.replace(_order(invoice), post_link=link)
            await service.pay_on_the_loop(
                rt, service.PaymentContext(token, ctx.ip), order, CARD, SANDBOX_TERMINAL_ID
            )
        stop = asyncio.Event()
        worker = asyncio.create_task(DeliveryWorker(rt).run(stop))
        for _ in range(200):
            if len(received) == len(invoices):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the last attempts recorded
        stop.set()
        await worker

    asyncio.run(run())
    assert len(received) == 5
    with rt.db.read() as session:
        states = session.scalars(text("SELECT state FROM notifications")).all()
    assert states == ["delivered"] * 5
    assert writers and {thread.name for thread in writers} == {threading.main_thread().name}


def test_a_backlog_is_written_over_several_turns(rt: Runtime) -> None:
    from tolem.db.group import LARGEST_BATCH

    outcomes, batches = _together(rt, *(_insert(n) for n in range(2 * LARGEST_BATCH + 5)))
    assert outcomes == list(range(2 * LARGEST_BATCH + 5))
    assert batches == 3 and len(_rows(rt)) == 2 * LARGEST_BATCH + 5


class _Halt(BaseException):
    pass


def test_a_write_that_raises_a_base_exception_fails_its_batch_and_leaves_no_one_waiting(
    rt: Runtime,
) -> None:
    def halts(session: Session) -> None:
        raise _Halt

    loop_errors: list[dict[str, Any]] = []

    async def run() -> list[Any]:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        group = rt.db.grouped()
        return await asyncio.wait_for(
            asyncio.gather(
                *(group.transact(work) for work in (_insert(1), halts, _insert(3))),
                return_exceptions=True,
            ),
            5,
        )

    outcomes = asyncio.run(run())
    assert all(isinstance(outcome, _Halt) for outcome in outcomes), outcomes
    assert _rows(rt) == [] and loop_errors  # and the loop was told


def test_writes_one_after_another_reuse_the_connection_used_last(rt: Runtime) -> None:
    """SQLite's page cache of a connection stays valid until another connection writes:
    the pool hands out the connection used last (LIFO), not the one idle longest."""

    def driver(session: Session) -> int:
        return id(session.connection().connection.driver_connection)

    with rt.db.read() as first, rt.db.read() as second, rt.db.read() as third:
        opened = {driver(first), driver(second), driver(third)}  # three in the pool
    assert len(opened) == 3
    used = [rt.db.transact(driver) for _ in range(5)]
    assert len(set(used)) == 1 and used[0] in opened


def test_no_other_writer_gets_in_between_a_spoilt_batch_and_its_second_try(
    rt: Runtime,
) -> None:
    """The writer slot stays with the batch from its first try to its second: a thread
    taking it in between would have the batch, spoilt again, tried again and again."""
    real_write = rt.db.write
    opened: list[str] = []

    def write(*args: Any, **kwargs: Any) -> Any:
        if opened:  # the second try: can another thread write now?
            outcome: list[str] = []

            def other() -> None:
                try:
                    with real_write(wait=False):
                        outcome.append("wrote")
                except Exception as exc:
                    outcome.append(type(exc).__name__)

            thread = threading.Thread(target=other)
            thread.start()
            thread.join(10)
            opened.append(outcome[0])
        opened.append("try")
        return real_write(*args, **kwargs)

    rt.db.write = write  # type: ignore[method-assign]

    def duplicate(session: Session) -> None:
        session.add(Row(n=1))
        session.flush()

    outcomes, _ = _together(rt, _insert(1), duplicate, _insert(3))
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert opened == ["try", "WriterBusy", "try"]


def test_a_write_cancelled_after_its_commit_is_answered(rt: Runtime) -> None:
    async def run() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(rt.db.grouped().transact(_insert(1)))
        await asyncio.sleep(0)  # it waits for its turn, which comes next
        loop.call_soon(task.cancel)  # right after the turn has committed it
        return await task

    assert asyncio.run(run()) == 1 and _rows(rt) == [1]


def test_a_write_raising_stop_iteration_fails_alone(rt: Runtime) -> None:
    def stops(session: Session) -> None:
        raise StopIteration

    outcomes, _ = _together(rt, _insert(1), stops, _insert(3))
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert isinstance(outcomes[1], RuntimeError) and _rows(rt) == [1, 3]
