"""The delivery worker records finished attempts a batch per write transaction."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tolem.config import Settings
from tolem.db.base import utcnow
from tolem.db.migrate import prepare_database
from tolem.merchants.service import SANDBOX_TERMINAL_ID, find_by_client_id
from tolem.notifications import delivery, service
from tolem.notifications.delivery import DeliveryWorker
from tolem.notifications.models import DeliveryAttempt, Notification
from tolem.payments.models import Transaction
from tolem.runtime import Runtime

OK = service.AttemptResult(200, 3)


def _claimed(n: int) -> service.Claimed:
    return service.Claimed(str(n), "m", "http://x/", "{}", n, 1)


def test_results_that_finish_together_are_written_together() -> None:
    batches: list[list[str]] = []

    async def write(batch: delivery._Batch) -> list[str | BaseException]:
        batches.append([claimed.id for claimed, _ in batch])
        return [f"state-{claimed.id}" for claimed, _ in batch]

    async def main() -> list[str]:
        recorder = delivery._Recorder(write)
        runner = asyncio.create_task(recorder.run())
        first = await recorder.record(_claimed(0), OK)
        rest = await asyncio.gather(*(recorder.record(_claimed(n), OK) for n in range(1, 6)))
        runner.cancel()
        return [first, *rest]

    states = asyncio.run(main())
    assert states == [f"state-{n}" for n in range(6)]
    assert batches == [["0"], ["1", "2", "3", "4", "5"]]  # five results, one transaction


@pytest.mark.parametrize("broken_first", [True, False])
def test_a_result_that_cannot_be_recorded_leaves_the_others_recorded(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broken_first: bool,
    postgres_or_sqlite_empty_url: str,
) -> None:
    """The batch is first written in one transaction; when one result fails, each is
    written again on its own (SQLite: a savepoint each in the loop's group commit;
    PostgreSQL: a transaction each). The ones recorded before it are rolled back with
    the first try, and recorded once, by the second."""
    rt = Runtime.start(Settings(data_dir=tmp_path, database_url=postgres_or_sqlite_empty_url))
    try:
        prepare_database(rt.db, sandbox=True)
        with rt.db.write() as session:
            merchant = find_by_client_id(session, "test")
            assert merchant is not None
            for n in range(2):
                tx = Transaction(
                    merchant_id=merchant.id,
                    terminal_id=SANDBOX_TERMINAL_ID,
                    invoice_id=f"00000000{n}",
                    invoice_claim=f"00000{n}",
                    amount=Decimal("1.00"),
                    currency="KZT",
                    status="AUTH",
                    post_link="http://127.0.0.1:9/",
                )
                session.add(tx)
                session.flush()
                service.enqueue(session, tx)
        with rt.db.write() as session:
            batch = service.claim(session, now=utcnow(), limit=10, lease=60)
        assert len(batch) == 2
        broken, fine = batch if broken_first else batch[::-1]
        real_record = service.record

        def record(session: Session, claimed: service.Claimed, *args: Any, **kw: Any) -> str:
            if claimed.id == broken.id:
                raise RuntimeError("lost the database for this one")
            return real_record(session, claimed, *args, **kw)

        monkeypatch.setattr(service, "record", record)
        order = [(broken, OK), (fine, OK)] if broken_first else [(fine, OK), (broken, OK)]
        recorded = asyncio.run(DeliveryWorker(rt)._record(order))
        states = dict(zip((c.id for c, _ in order), recorded, strict=True))
        assert isinstance(states[broken.id], RuntimeError) and states[fine.id] == "delivered"
        with rt.db.read() as session:
            assert session.get(Notification, fine.id).state == "delivered"  # type: ignore[union-attr]
            assert session.get(Notification, broken.id).state == "pending"  # type: ignore[union-attr]
            outcome = session.get(DeliveryAttempt, broken.attempt_id)
            assert outcome is not None and outcome.outcome == "sending"  # its claim expires
            done = session.get(DeliveryAttempt, fine.attempt_id)
            assert done is not None and done.outcome == "delivered" and done.http_status == 200
    finally:
        rt.close()
