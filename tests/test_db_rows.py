"""insert_row: what a Core insert of an ORM object writes, and what the object then reads."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tolem.db.base import Money, insert_row, new_id
from tolem.payments.models import Status, Transaction


class _Base(DeclarativeBase):  # not tolem's metadata: the migration checks never see it
    pass


class _Row(_Base):
    __tablename__ = "test_insert_row"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(36), default=new_id)
    note: Mapped[str] = mapped_column(sa.String(10), default="")
    total: Mapped[Decimal] = mapped_column(Money(), default=Decimal("0.00"))
    by_server: Mapped[str] = mapped_column(sa.String(10), server_default="server")
    optional: Mapped[str | None] = mapped_column(sa.String(10))


def test_defaults_fill_the_row_and_the_object_alike() -> None:
    tx = Transaction(merchant_id="m", amount=Decimal("10.00"), invoice_id="000000000001")
    row = insert_row(tx)
    assert row["id"] == tx.id and len(tx.id) == 36
    assert row["status"] == tx.status == Status.NEW.value
    assert row["amount_charged"] == tx.amount_charged == Decimal("0.00")
    assert row["created_at"] == tx.created_at is not None
    assert row["invoice_claim"] is None  # nullable, no default
    assert row["amount"] == Decimal("10.00")


def test_the_database_fills_autoincrement_keys_and_server_defaults() -> None:
    engine = sa.create_engine("sqlite://")
    table = _Row.__table__
    assert isinstance(table, sa.Table)
    table.create(engine)
    obj = _Row(note="given")
    row = insert_row(obj)
    assert "id" not in row and "by_server" not in row
    assert row["note"] == "given" and row["total"] == Decimal("0.00") and row["optional"] is None
    with Session(engine) as session:
        session.execute(sa.insert(table), row)
        stored = session.scalars(sa.select(_Row)).one()
        assert stored.id == 1 and stored.by_server == "server"
        assert stored.key == obj.key and stored.total == Decimal("0.00")
    engine.dispose()
