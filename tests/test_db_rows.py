"""insert_row and new_row: what a Core insert of an ORM object writes, and what the
object then reads."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import instance_state

from tolem.db.base import Money, insert_row, new_id, new_row
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


def test_new_row_gives_what_insert_row_gives_of_the_constructed_object() -> None:
    values = {"merchant_id": "m", "amount": Decimal("10.00"), "invoice_id": "000000000001",
              "card_mask": "440563...5096", "language": "kaz"}  # fmt: skip
    made, row = new_row(Transaction, **values)
    built = Transaction(**values)
    expected = insert_row(built)
    generated = {"id", "created_at", "updated_at"}  # a new id and clock each time
    assert row.keys() == expected.keys()
    assert {k: v for k, v in row.items() if k not in generated} == {
        k: v for k, v in expected.items() if k not in generated
    }
    assert len(made.id) == 36 and made.created_at is not None and made.updated_at is not None
    # The object reads as the row: given values and defaults, through its attributes.
    assert (made.merchant_id, made.amount, made.language) == ("m", Decimal("10.00"), "kaz")
    assert (made.status, made.amount_charged, made.invoice_claim) == ("NEW", Decimal("0.00"), None)
    assert instance_state(made).transient  # in no session: nothing will flush it
    # _Row: an autoincrement key and a server default are left to the database.
    obj, row = new_row(_Row, note="given")
    assert "id" not in row and "by_server" not in row and obj.note == "given"


def test_new_row_refuses_what_the_constructor_refuses() -> None:
    with pytest.raises(TypeError, match="no_such_column"):
        new_row(Transaction, merchant_id="m", no_such_column=1)
    with pytest.raises(TypeError):
        Transaction(merchant_id="m", no_such_column=1)
